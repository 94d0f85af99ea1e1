#![no_std]
// This file exists to give the crate a library target, so that the userspace crate can name it as
// a build-dependency and be rebuilt when it changes. The programs live in `main.rs`.
