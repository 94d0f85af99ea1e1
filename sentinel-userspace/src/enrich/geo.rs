//! GeoIP from MaxMind DB (`.mmdb`) files, in both layouts users have: MaxMind GeoIP2 /
//! GeoLite2-City (`country.iso_code`, `city.names.en`, `location.latitude/longitude`) and the
//! flat DB-IP Lite layout (`country_code`, `city`, `latitude`, `longitude`). Several files may be
//! given (for example separate IPv4 and IPv6 databases): the first with data for an address wins.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use maxminddb::Reader;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Where an address is. The names are shared (`Arc<str>`): the enricher hands a cached answer
/// to every request from the address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<Arc<str>>,
    /// City name (English).
    pub city: Option<Arc<str>>,
    /// Latitude in degrees.
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    pub longitude: Option<f64>,
}

impl GeoInfo {
    /// Coordinates when both are known.
    pub fn coordinates(&self) -> Option<(f64, f64)> {
        Some((self.latitude?, self.longitude?))
    }
}

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file cannot be opened or is not a MaxMind DB.
    #[error("GeoIP database {path}: {message}")]
    Open {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct Names {
    #[serde(default)]
    names: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CityField {
    Structured(Names),
    Flat(String),
}

#[derive(Deserialize)]
struct IsoCode {
    iso_code: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// The union of both layouts; every field optional.
#[derive(Deserialize)]
struct Record {
    country: Option<IsoCode>,
    country_code: Option<String>,
    city: Option<CityField>,
    location: Option<Location>,
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl From<Record> for GeoInfo {
    fn from(r: Record) -> Self {
        let city = match r.city {
            Some(CityField::Structured(n)) => n
                .names
                .get("en")
                .cloned()
                .or_else(|| n.names.into_values().next()),
            Some(CityField::Flat(s)) => Some(s),
            None => None,
        };
        GeoInfo {
            country: r
                .country
                .and_then(|c| c.iso_code)
                .or(r.country_code)
                .map(Arc::from),
            city: city.map(Arc::from),
            latitude: r.location.as_ref().and_then(|l| l.latitude).or(r.latitude),
            longitude: r
                .location
                .as_ref()
                .and_then(|l| l.longitude)
                .or(r.longitude),
        }
    }
}

/// One or more opened databases.
pub struct GeoDb {
    readers: Vec<(PathBuf, Reader<Vec<u8>>)>,
    /// Lookups whose record could not be read ([`GeoDb::errors`]).
    errors: AtomicU64,
}

/// Words of MaxMind's and DB-IP's `database_type`s for databases that hold no locations (ASN,
/// ISP, domain, connection type, anonymous IP): given by mistake, they would leave every address
/// without a country.
/// A type that also names locations (DB-IP's `Location-ISP`, MaxMind's Enterprise) is read.
const WITHOUT_LOCATIONS: [&str; 5] = ["ASN", "ISP", "Domain", "Connection-Type", "Anonymous"];
const WITH_LOCATIONS: [&str; 4] = ["City", "Country", "Location", "Enterprise"];

/// Whether a `database_type` names a database without locations.
fn holds_no_locations(kind: &str) -> bool {
    WITHOUT_LOCATIONS.iter().any(|w| kind.contains(w))
        && !WITH_LOCATIONS.iter().any(|w| kind.contains(w))
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("files", &self.files())
            .finish()
    }
}

impl GeoDb {
    /// Opens every file; any one that cannot be read is an error naming it.
    pub fn open(paths: &[PathBuf]) -> Result<Self, GeoError> {
        let mut readers = Vec::with_capacity(paths.len());
        for p in paths {
            let r = Reader::open_readfile(p).map_err(|e| GeoError::Open {
                path: p.clone(),
                message: e.to_string(),
            })?;
            let kind = &r.metadata().database_type;
            if holds_no_locations(kind) {
                return Err(GeoError::Open {
                    path: p.clone(),
                    message: format!(
                        "a {kind} database holds no locations; give a city or country database \
                         (MaxMind GeoIP2/GeoLite2-City or -Country, DB-IP City Lite)"
                    ),
                });
            }
            readers.push((p.clone(), r));
        }
        Ok(Self {
            readers,
            errors: AtomicU64::new(0),
        })
    }

    /// Lookups so far whose record could not be read: a damaged file, or a record in neither
    /// layout. The first is logged; those addresses get no location.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn failed(&self, path: &Path, ip: IpAddr, e: &maxminddb::MaxMindDbError) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!(
                file = %path.display(),
                %ip,
                error = %e,
                "a GeoIP record cannot be read (the file is damaged, or not in a layout Sentinel \
                 reads): such addresses get no location; later failures are only counted"
            );
        }
    }

    /// The files in lookup order.
    pub fn files(&self) -> Vec<&Path> {
        self.readers.iter().map(|(p, _)| p.as_path()).collect()
    }

    /// Looks an address up; `None` when no database has data for it. A record that cannot be
    /// read counts as no data, and in [`GeoDb::errors`].
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoInfo> {
        for (path, r) in &self.readers {
            match r.lookup(ip).and_then(|res| res.decode::<Record>()) {
                Ok(Some(rec)) => {
                    let info = GeoInfo::from(rec);
                    if info.country.is_some() || info.coordinates().is_some() {
                        return Some(info);
                    }
                }
                Ok(None) => {}
                Err(e) => self.failed(path, ip, &e),
            }
        }
        None
    }
}

/// Great-circle distance in kilometres (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const R: f64 = 6371.0;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * R * h.sqrt().asin()
}

/// Builders of small test databases over documentation ranges (tests, the demo, the simulator).
pub mod testdb {
    use std::collections::BTreeMap;

    use ipnet::IpNet;
    use serde::Serialize;

    /// One row: a network and where it is.
    #[derive(Clone, Debug)]
    pub struct Place {
        /// Network.
        pub net: IpNet,
        /// ISO country code.
        pub country: &'static str,
        /// City.
        pub city: &'static str,
        /// Latitude.
        pub lat: f64,
        /// Longitude.
        pub lon: f64,
    }

    #[derive(Serialize)]
    struct MmCountry<'a> {
        iso_code: &'a str,
    }
    #[derive(Serialize)]
    struct MmCity {
        names: BTreeMap<String, String>,
    }
    #[derive(Serialize)]
    struct MmLocation {
        latitude: f64,
        longitude: f64,
    }
    #[derive(Serialize)]
    struct MaxMindRecord<'a> {
        country: MmCountry<'a>,
        city: MmCity,
        location: MmLocation,
    }
    #[derive(Serialize)]
    struct DbIpRecord<'a> {
        country_code: &'a str,
        city: &'a str,
        latitude: f64,
        longitude: f64,
    }

    /// The layout to write.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Layout {
        /// GeoIP2 / GeoLite2-City.
        MaxMind,
        /// DB-IP Lite (flat).
        DbIp,
    }

    /// Serialises `places` as an `.mmdb` in `layout`.
    pub fn build(places: &[Place], layout: Layout) -> anyhow::Result<Vec<u8>> {
        let mut w = mmdb_writer::Writer::new(match layout {
            Layout::MaxMind => "GeoLite2-City",
            Layout::DbIp => "DBIP-City-Lite",
        });
        for p in places {
            match layout {
                Layout::MaxMind => w.insert(
                    p.net,
                    &MaxMindRecord {
                        country: MmCountry {
                            iso_code: p.country,
                        },
                        city: MmCity {
                            names: [("en".to_owned(), p.city.to_owned())].into(),
                        },
                        location: MmLocation {
                            latitude: p.lat,
                            longitude: p.lon,
                        },
                    },
                )?,
                Layout::DbIp => w.insert(
                    p.net,
                    &DbIpRecord {
                        country_code: p.country,
                        city: p.city,
                        latitude: p.lat,
                        longitude: p.lon,
                    },
                )?,
            }
        }
        Ok(w.to_bytes()?)
    }
}

#[cfg(test)]
mod tests {
    use super::{testdb::*, *};

    fn places() -> Vec<Place> {
        vec![
            Place {
                net: "192.0.2.0/24".parse().unwrap(),
                country: "SA",
                city: "Riyadh",
                lat: 24.7136,
                lon: 46.6753,
            },
            Place {
                net: "203.0.113.0/24".parse().unwrap(),
                country: "VN",
                city: "Hanoi",
                lat: 21.0278,
                lon: 105.8342,
            },
            Place {
                net: "2001:db8:1::/48".parse().unwrap(),
                country: "DE",
                city: "Berlin",
                lat: 52.52,
                lon: 13.405,
            },
        ]
    }

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("sentinel-geo-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
        fn write(&self, layout: Layout, name: &str, places: &[Place]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, build(places, layout).unwrap()).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_both_layouts_for_v4_and_v6() {
        let dir = TempDir::new("layouts");
        for (layout, name) in [(Layout::MaxMind, "mm.mmdb"), (Layout::DbIp, "dbip.mmdb")] {
            let db = GeoDb::open(&[dir.write(layout, name, &places())]).unwrap();
            let r = db.lookup("192.0.2.77".parse().unwrap()).unwrap();
            assert_eq!(r.country.as_deref(), Some("SA"), "{layout:?}");
            assert_eq!(r.city.as_deref(), Some("Riyadh"));
            assert!((r.latitude.unwrap() - 24.7136).abs() < 1e-6);
            let r = db.lookup("2001:db8:1::5".parse().unwrap()).unwrap();
            assert_eq!(r.country.as_deref(), Some("DE"), "{layout:?}");
            assert!(db.lookup("198.51.100.1".parse().unwrap()).is_none());
        }
    }

    #[test]
    fn several_files_are_searched_in_order() {
        let dir = TempDir::new("order");
        let empty = dir.write(Layout::DbIp, "empty.mmdb", &[]);
        let db = GeoDb::open(&[empty, dir.write(Layout::MaxMind, "mm2.mmdb", &places())]).unwrap();
        assert_eq!(
            db.lookup("203.0.113.9".parse().unwrap())
                .unwrap()
                .country
                .as_deref(),
            Some("VN")
        );
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let e = GeoDb::open(&[PathBuf::from("/nonexistent/x.mmdb")]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.mmdb"), "{e}");
        let dir = TempDir::new("junk");
        let junk = dir.0.join("junk.mmdb");
        std::fs::write(&junk, b"not a database").unwrap();
        assert!(GeoDb::open(&[junk]).is_err());
    }

    #[test]
    fn databases_without_locations_are_refused() {
        let dir = TempDir::new("kinds");
        let asn = dir.0.join("asn.mmdb");
        let mut w = mmdb_writer::Writer::new("GeoLite2-ASN");
        #[derive(serde::Serialize)]
        struct Asn {
            autonomous_system_number: u32,
        }
        w.insert(
            "192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(),
            &Asn {
                autonomous_system_number: 64496,
            },
        )
        .unwrap();
        std::fs::write(&asn, w.to_bytes().unwrap()).unwrap();
        let e = GeoDb::open(&[asn]).unwrap_err().to_string();
        assert!(
            e.contains("asn.mmdb") && e.contains("GeoLite2-ASN database holds no locations"),
            "{e}"
        );
        for kind in ["GeoIP2-ISP", "DBIP-ASN-Lite", "GeoIP2-Anonymous-IP"] {
            assert!(holds_no_locations(kind), "{kind}");
        }
        for kind in [
            "GeoLite2-City",
            "GeoIP2-Country",
            "DBIP-City-Lite",
            "DBIP-Location-ISP",
            "GeoIP2-Enterprise",
            "some-other-db",
        ] {
            assert!(!holds_no_locations(kind), "{kind}");
        }
    }

    /// A damaged record is no location, counted (the first is logged): a damaged file gave no
    /// sign before, and the geo models went quiet for the addresses it covers.
    #[test]
    fn damaged_records_are_counted() {
        let dir = TempDir::new("damaged");
        let mut bytes = build(&places(), Layout::MaxMind).unwrap();
        let at = memchr::memmem::find(&bytes, b"Riyadh").unwrap();
        bytes[at - 24..at + 6].fill(0xff);
        let p = dir.0.join("damaged.mmdb");
        std::fs::write(&p, bytes).unwrap();
        let db = GeoDb::open(&[p]).unwrap();
        assert_eq!(db.errors(), 0);
        assert_eq!(db.lookup("192.0.2.77".parse().unwrap()), None);
        assert_eq!(db.errors(), 1);
        let good = GeoDb::open(&[dir.write(Layout::MaxMind, "good.mmdb", &places())]).unwrap();
        assert!(good.lookup("192.0.2.77".parse().unwrap()).is_some());
        assert!(good.lookup("198.51.100.1".parse().unwrap()).is_none());
        assert_eq!(good.errors(), 0);
    }

    #[test]
    fn riyadh_to_hanoi_is_about_5900_km() {
        let d = distance_km((24.7136, 46.6753), (21.0278, 105.8342));
        assert!((d - 5950.0).abs() < 150.0, "{d}");
        assert!(distance_km((1.0, 1.0), (1.0, 1.0)) < 1e-9);
    }
}
