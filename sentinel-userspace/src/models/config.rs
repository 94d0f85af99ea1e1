//! `[models]`: the detectors' settings. Every field has a default (written beside it); unknown
//! keys are rejected. Times are seconds (`*_s`), distances kilometres, speeds km/h.
//!
//! ```toml
//! [models]
//! enabled = true            # false: capture only (the transactions log), no analysis
//! cooldown_s = 300          # repeats of one alert (kind + subject) suppressed this long
//! max_principals = 1000000  # state kept per principal is bounded by this (LRU beyond)
//! idle_s = 1209600          # principals silent for 14 days are forgotten
//!
//! [models.geo]
//! max_speed_kmh = 1000
//! min_distance_km = 500
//! ```

use serde::{Deserialize, Serialize};

use super::{
    behavior, credential, engine::ModelsError, enumeration, exposure, geo, injection, rate, token,
};

/// `[models]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Whether captured transactions are analysed (enrichment, every detector, alerts and the
    /// response policy). `false`: capture only, for the transactions log (`[capture]
    /// transactions_log`). Default true.
    pub enabled: bool,
    /// Seconds during which a repeat of an alert (same kind, same subject) is suppressed unless it
    /// is more severe. Default 300.
    pub cooldown_s: f64,
    /// Principals (and sources, accounts, credentials, each in its own map) tracked at most;
    /// the least recently seen are evicted beyond. Default 1,000,000 (see the README for memory).
    pub max_principals: usize,
    /// Seconds of silence after which a principal's state is forgotten. Default 1,209,600 (14 d).
    pub idle_s: f64,
    /// Endpoint templates (suffixes, in any case) that are logins: the user name is read from
    /// the request body there, and a 401 or 403 there is a failed login even when no username
    /// could be read. Default `/login`, `/signin`, `/auth/login`, `/api/login`, `/oauth/token`,
    /// `/session`.
    pub login_endpoints: Vec<String>,
    /// Endpoint templates (suffixes, in any case) of GraphQL APIs: there every call of a login
    /// mutation field (`graphql_login_fields`) in the request body is a login attempt, each
    /// alias and each operation of a batch one of its own (at most 100 a request), its account
    /// read from its arguments or variables and its outcome from the response. Default
    /// `/graphql`.
    pub graphql_endpoints: Vec<String>,
    /// Mutation fields (in any case) that log in. Default `login`, `signIn`, `logIn`,
    /// `loginUser`, `authenticate`, `tokenAuth`, `userLogin`, `authenticateUser`,
    /// `generateCustomerToken`.
    pub graphql_login_fields: Vec<String>,
    /// Query parameters that carry API keys and access tokens, in any case and naming style
    /// (`api_key` is also `apiKey`, `api-key`, `APIKEY`): a value of 16 characters or more
    /// that is no JWT names the principal as the same key in `X-API-Key` would (after every
    /// credential a request carries elsewhere), and is its credential (`token_reuse`). Their
    /// values are redacted in the transactions log and in alerts. Default `api_key`,
    /// `access_token`, `appid` (`key` and `token` are opt-in: they also name public keys and
    /// shared links).
    pub api_key_params: Vec<String>,
    /// Behaviour profiles and `behavior_anomaly`.
    pub behavior: behavior::Config,
    /// Learned rate limits and `rate_anomaly`.
    pub rate: rate::Config,
    /// `brute_force` and `credential_stuffing`.
    pub credential: credential::Config,
    /// `new_country` and `impossible_travel`.
    pub geo: geo::Config,
    /// `sql_injection`, `xss` and `path_traversal`.
    pub injection: injection::Config,
    /// `data_exposure`.
    pub exposure: exposure::Config,
    /// `token_reuse` and `jwt_weakness`.
    pub token: token::Config,
    /// `enumeration` and `scraping`.
    pub enumeration: enumeration::Config,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cooldown_s: 300.0,
            max_principals: 1_000_000,
            idle_s: 14.0 * 86_400.0,
            login_endpoints: [
                "/login",
                "/signin",
                "/auth/login",
                "/api/login",
                "/oauth/token",
                "/session",
            ]
            .map(String::from)
            .to_vec(),
            graphql_endpoints: vec!["/graphql".into()],
            graphql_login_fields: [
                "login",
                "signIn",
                "logIn",
                "loginUser",
                "authenticate",
                "tokenAuth",
                "userLogin",
                "authenticateUser",
                "generateCustomerToken",
            ]
            .map(String::from)
            .to_vec(),
            api_key_params: ["api_key", "access_token", "appid"]
                .map(String::from)
                .to_vec(),
            behavior: Default::default(),
            rate: Default::default(),
            credential: Default::default(),
            geo: Default::default(),
            injection: Default::default(),
            exposure: Default::default(),
            token: Default::default(),
            enumeration: Default::default(),
        }
    }
}

/// Collects range checks.
pub struct Checker {
    prefix: &'static str,
    error: Option<ModelsError>,
}

impl Checker {
    /// Checks below `[models.<prefix>]` (empty: `[models]` itself).
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            error: None,
        }
    }

    /// Records `message` against `field` unless `ok`.
    pub fn check(&mut self, field: &str, ok: bool, message: &str) -> &mut Self {
        if !ok && self.error.is_none() {
            let field = if self.prefix.is_empty() {
                field.to_owned()
            } else {
                format!("{}.{field}", self.prefix)
            };
            self.error = Some(ModelsError::Invalid {
                field,
                message: message.to_owned(),
            });
        }
        self
    }

    /// A strictly positive finite number.
    pub fn positive(&mut self, field: &str, v: f64) -> &mut Self {
        self.check(field, v.is_finite() && v > 0.0, "must be a positive number")
    }

    /// A number in `[0, 1]`.
    pub fn unit(&mut self, field: &str, v: f64) -> &mut Self {
        self.check(field, (0.0..=1.0).contains(&v), "must be between 0 and 1")
    }

    /// The first failure.
    pub fn finish(&mut self) -> Result<(), ModelsError> {
        self.error.take().map_or(Ok(()), Err)
    }
}

impl ModelsConfig {
    /// Checks every range.
    pub fn validate(&self) -> Result<(), ModelsError> {
        Checker::new("")
            .check(
                "cooldown_s",
                self.cooldown_s.is_finite() && self.cooldown_s >= 0.0,
                "must be zero or more",
            )
            .check(
                "max_principals",
                self.max_principals > 0,
                "must be at least 1",
            )
            .positive("idle_s", self.idle_s)
            .check(
                "graphql_login_fields",
                self.graphql_login_fields.iter().all(|f| is_graphql_name(f)),
                "must be GraphQL field names (a letter or _, then letters, digits or _)",
            )
            .check(
                "graphql_endpoints",
                self.graphql_endpoints.iter().all(|p| p.starts_with('/')),
                "must be paths starting with /",
            )
            .check(
                "api_key_params",
                self.api_key_params.iter().all(|p| is_param_name(p)),
                "must be query parameter names as decoded (a letter or digit, and no blank, &, ;, =, #, %, +, [ or ])",
            )
            .finish()?;
        self.behavior.validate()?;
        self.rate.validate()?;
        self.credential.validate()?;
        self.geo.validate()?;
        self.injection.validate()?;
        self.exposure.validate()?;
        self.token.validate()?;
        self.enumeration.validate()
    }
}

/// A query parameter name a configured one can match: something besides the separators that
/// naming styles put in names (`_`, `-`, `.`), and nothing that ends a query field or the
/// query (`&`, `;`, `=`, `#`), nor blanks, which no client sends unescaped; decoded (no `%` or
/// `+`: names are compared after percent-decoding, so `subscription%2Dkey` would never
/// match, and its values would go unredacted), and without brackets (`key[]` is `key`'s).
fn is_param_name(p: &str) -> bool {
    p.chars().any(char::is_alphanumeric)
        && !p.contains(|c: char| {
            c.is_whitespace() || matches!(c, '&' | ';' | '=' | '#' | '%' | '+' | '[' | ']')
        })
}

/// A GraphQL name: `[_A-Za-z][_0-9A-Za-z]*`.
fn is_graphql_name(f: &str) -> bool {
    f.starts_with(|c: char| c == '_' || c.is_ascii_alphabetic())
        && f.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphql_settings_are_checked() {
        let c = ModelsConfig {
            graphql_login_fields: vec!["login".into(), "sign in".into()],
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("models.graphql_login_fields"), "{e}");
        let c = ModelsConfig {
            graphql_endpoints: vec!["graphql".into()],
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("models.graphql_endpoints"), "{e}");
    }

    #[test]
    fn api_key_params_are_checked() {
        for bad in [
            "",
            "_-",
            "api key",
            "key=",
            "a&b",
            "k;",
            "subscription%2Dkey",
            "api+key",
            "key[]",
        ] {
            let c = ModelsConfig {
                api_key_params: vec!["key".into(), bad.into()],
                ..Default::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("models.api_key_params"), "{bad:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        for good in [
            vec![],
            vec!["subscription-key".to_owned(), "X-Goog-Api-Key".into()],
        ] {
            let c = ModelsConfig {
                api_key_params: good,
                ..Default::default()
            };
            c.validate().unwrap();
        }
    }

    #[test]
    fn the_defaults_are_valid_and_round_trip() {
        let d = ModelsConfig::default();
        d.validate().unwrap();
        let text = toml::to_string(&d).unwrap();
        let back: ModelsConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, d);
        let empty: ModelsConfig = toml::from_str("").unwrap();
        assert_eq!(empty, d);
    }

    #[test]
    fn unknown_keys_in_sections_are_errors() {
        let e = toml::from_str::<ModelsConfig>("[credential]\nbrute_force_scor = 3\n").unwrap_err();
        assert!(e.to_string().contains("brute_force_scor"), "{e}");
    }
}
