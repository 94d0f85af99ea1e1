//! Models: streaming detectors over [`Observation`]s that raise [`Alert`]s, each explained.
//!
//! The [`Engine`] runs every detector over each observation in stream order and de-duplicates
//! what they raise; [`ModelsConfig`] is the `[models]` section of the configuration. State is
//! bounded everywhere (see [`bounded`]) and every window is measured in observation time, so a
//! replay gives the same alerts as the live run that captured it.
//!
//! | module | kinds |
//! | --- | --- |
//! | [`behavior`] (with [`profile`], [`hst`]) | `behavior_anomaly` |
//! | [`rate`] | `rate_anomaly` |
//! | [`credential`] | `brute_force`, `credential_stuffing` |
//! | [`geo`] | `new_country`, `impossible_travel` |
//! | [`injection`] | `sql_injection`, `xss`, `path_traversal` |
//! | [`exposure`] | `data_exposure` |
//! | [`token`] | `token_reuse`, `jwt_weakness` |
//! | [`enumeration`] | `enumeration`, `scraping` |

pub mod alert;
pub mod behavior;
pub mod bounded;
pub mod config;
pub mod credential;
pub mod engine;
pub mod enumeration;
pub mod exposure;
pub mod geo;
pub mod hst;
pub mod injection;
pub mod observation;
pub mod profile;
pub mod rate;
pub mod rng;
pub mod synth;
pub mod token;

pub use alert::{Action, Alert, AlertKind, Severity};
pub use config::ModelsConfig;
pub use engine::{Detection, Detector, Engine, EngineStats, ModelsError};
pub use observation::{Header, LoginAttempt, Observation, header};
