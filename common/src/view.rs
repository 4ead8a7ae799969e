//! What a view is: a declared aggregation — its bucket
//! width, the dimensions it groups by, its filter and its measures — and bucketing.
//!
//! How a view is stored (its table layout) and how its filter is compiled live in the `layout`
//! module; this module holds only the definition, so that both the config and the layout can
//! depend on it.

use std::collections::HashSet;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::retention::Retention;
use crate::source::{FieldType, SourceConfig, check_name};

/// One declared aggregation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDef {
    /// Names the view table (`views/<name>`) and the API resource.
    pub name: String,
    /// The source whose events the view aggregates, by name; absent, the deployment's only
    /// source. Naming it where it was implied changes the definition, so the view is
    /// recomputed once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Bucket width.
    pub granularity: Granularity,
    /// Declared fields to group by.
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// SQL boolean expression over declared fields; only matching events are aggregated.
    #[serde(default)]
    pub filter: Option<String>,
    /// The aggregates kept per bucket and dimension values.
    pub measures: Vec<MeasureDef>,
    /// How long the view keeps a date; it keeps dates whose raw rows have expired unless this
    /// says otherwise. Not part of the definition: changing it recomputes nothing.
    #[serde(default, skip_serializing_if = "Retention::is_forever")]
    pub retention: Retention,
}

/// Bucket widths, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// One UTC day.
    Day,
}

impl Granularity {
    /// The config and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// Width of a bucket in microseconds, the unit of every timestamp column.
    pub fn micros(self) -> i64 {
        match self {
            Self::Minute => 60_000_000,
            Self::Hour => 3_600_000_000,
            Self::Day => 86_400_000_000,
        }
    }

    /// The start of the bucket holding `us` (UTC epoch microseconds).
    pub fn truncate(self, us: i64) -> i64 {
        us - us.rem_euclid(self.micros())
    }
}

/// One measure of a view.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureDef {
    /// Column and API name.
    pub name: String,
    /// The aggregate function.
    pub agg: AggKind,
    /// The field aggregated; not used by `count`.
    #[serde(default)]
    pub field: Option<String>,
}

/// Aggregate functions; each is a monoid so batch and speed states merge exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AggKind {
    /// Number of events.
    Count,
    /// Sum of non-null values.
    Sum,
    /// Smallest non-null value.
    Min,
    /// Largest non-null value.
    Max,
    /// Sum / count of non-null values.
    Avg,
    /// HyperLogLog estimate of distinct non-null values.
    ApproxDistinct,
}

impl AggKind {
    /// The config and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
            Self::Avg => "avg",
            Self::ApproxDistinct => "approx_distinct",
        }
    }
}

impl FromStr for Granularity {
    type Err = ();

    /// Reads the config and API spelling ([`Granularity::as_str`]).
    fn from_str(text: &str) -> std::result::Result<Self, ()> {
        match text {
            "minute" => Ok(Self::Minute),
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(()),
        }
    }
}

impl ViewDef {
    /// Checks what serde cannot, against the declared fields of `source`: a plain name, declared
    /// dimensions, at least one measure, measure names used once, and aggregates that fit their
    /// field's type. That the columns lay out and the filter compiles is checked with the rest
    /// of the deployment, once the layout can be derived.
    pub fn check(&self, source: &SourceConfig) -> Result<()> {
        let key = format!("views.{}", self.name);
        check_name("views[].name", &self.name)?;
        for dim in &self.dimensions {
            if source.field(dim).is_none() {
                return Err(Error::Invalid {
                    key,
                    message: format!(
                        "dimension `{dim}` is not a declared field of source `{}`",
                        source.name
                    ),
                });
            }
        }
        if self.measures.is_empty() {
            return Err(Error::Invalid {
                key,
                message: "declare at least one measure".into(),
            });
        }
        let mut measure_names = HashSet::new();
        for m in &self.measures {
            let key = format!("{key}.measures.{}", m.name);
            check_name(&key, &m.name)?;
            if !measure_names.insert(&m.name) || self.dimensions.contains(&m.name) {
                return Err(Error::Invalid {
                    key,
                    message: "measure name used twice in the view".into(),
                });
            }
            check_measure(source, m).map_err(|message| Error::Invalid { key, message })?;
        }
        Ok(())
    }
}

/// What is wrong with aggregating `m` as declared, in words for [`Error::Invalid`].
fn check_measure(source: &SourceConfig, m: &MeasureDef) -> std::result::Result<(), String> {
    let field = match (m.agg, &m.field) {
        (AggKind::Count, None) => return Ok(()),
        (AggKind::Count, Some(_)) => return Err("count takes no field".into()),
        (_, None) => return Err(format!("{} needs a field", m.agg.as_str())),
        (_, Some(name)) => name,
    };
    let Some(def) = source.field(field) else {
        return Err(format!("`{field}` is not a declared field"));
    };
    let ok = match m.agg {
        AggKind::Sum | AggKind::Avg => def.kind.is_numeric(),
        AggKind::Min | AggKind::Max => def.kind.is_numeric() || def.kind == FieldType::Timestamp,
        AggKind::ApproxDistinct | AggKind::Count => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "field `{field}` of type {:?} cannot be aggregated that way",
            def.kind
        )
        .to_lowercase())
    }
}

/// A digest of everything that decides a view's contents. A view table computed under another
/// definition is recomputed in full.
pub fn fingerprint(source: &SourceConfig, view: &ViewDef) -> String {
    let mut hash = Sha256::new();
    let view = ViewDef {
        retention: Retention::Forever,
        ..view.clone()
    };
    let definition = serde_json::json!({
        "view": view,
        "fields": source.fields.iter().map(|f| (&f.name, f.kind)).collect::<Vec<_>>(),
        "time_field": source.time_field,
    });
    hash.update(definition.to_string().as_bytes());
    hex::encode(&hash.finalize()[..16])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The demo deployment's shop source and the views over it, read without the config
    /// module (which depends on this one and on [`crate::layout`]).
    pub(crate) fn demo() -> (SourceConfig, Vec<ViewDef>) {
        #[derive(Deserialize)]
        struct Demo {
            sources: Vec<SourceConfig>,
            views: Vec<ViewDef>,
        }
        let demo: Demo = toml::from_str(include_str!("demo.toml")).unwrap();
        let shop = demo.sources.into_iter().next().unwrap();
        let views: Vec<ViewDef> = demo
            .views
            .into_iter()
            .filter(|v| v.source.as_ref() == Some(&shop.name))
            .collect();
        (shop, views)
    }

    #[test]
    fn granularity_truncates_in_utc_including_before_epoch() {
        assert_eq!(Granularity::Hour.truncate(3_600_000_000 + 5), 3_600_000_000);
        assert_eq!(Granularity::Day.truncate(-1), -86_400_000_000);
        assert_eq!(Granularity::Minute.truncate(59_999_999), 0);
    }

    #[test]
    fn granularities_read_their_own_spelling() {
        for g in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
            assert_eq!(g.as_str().parse(), Ok(g));
        }
        assert_eq!("all".parse::<Granularity>(), Err(()));
        assert_eq!("Hour".parse::<Granularity>(), Err(()));
    }

    #[test]
    fn fingerprints_change_with_the_definition() {
        let (source, views) = demo();
        let mut view = views[0].clone();
        let before = fingerprint(&source, &view);
        assert_eq!(before, fingerprint(&source, &view));
        view.filter = Some("type = 'view'".into());
        assert_ne!(before, fingerprint(&source, &view));
    }

    #[test]
    fn a_definition_keeps_its_fingerprint_across_releases() {
        // The demo's sales_by_country as lakes written before views could name their source
        // recorded it: a new optional key must not recompute every existing view.
        let (source, views) = demo();
        let unnamed = ViewDef {
            source: None,
            ..views[0].clone()
        };
        assert_eq!(
            fingerprint(&source, &unnamed),
            "40f54ea6c28c829c40a8d35c97f548af"
        );
    }
}
