//! Enrichment: what a transaction is about beyond its bytes: who (principal), where (GeoIP) and
//! which endpoint (template).

pub mod cookie;
pub mod geo;
pub mod graphql;
pub mod pipeline;
pub mod principal;
pub mod template;
