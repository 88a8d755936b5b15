//! Parameter values and their specs: the literals a workflow gives a node (`steps: 20`), what each
//! parameter accepts (kind, default, range, choices), and the check that a value fits.
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A literal parameter value, as written in a workflow or on the command line.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (also how choices are given).
    String(String),
    /// A boolean.
    Boolean(bool),
}

/// A node's parameters by name; the executor hands a node all of them, defaults filled in.
pub type ParamMap = BTreeMap<String, ParamValue>;

impl ParamValue {
    /// What kind of literal this is, for messages ("expected an integer, found a string").
    pub fn kind_name(&self) -> &'static str {
        match self {
            ParamValue::Int(_) => "an integer",
            ParamValue::Float(_) => "a float",
            ParamValue::String(_) => "a string",
            ParamValue::Boolean(_) => "a boolean",
        }
    }

    /// The value as JSON, the bridge into a node's typed `Params` struct.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Int(v) => serde_json::Value::from(*v),
            ParamValue::Float(v) => {
                serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into)
            }
            ParamValue::String(v) => serde_json::Value::from(v.as_str()),
            ParamValue::Boolean(v) => serde_json::Value::from(*v),
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Float(v) => write!(f, "{v:?}"),
            ParamValue::String(v) => write!(f, "{v:?}"),
            ParamValue::Boolean(v) => write!(f, "{v}"),
        }
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamVisitor;
        impl Visitor<'_> for ParamVisitor {
            type Value = ParamValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer, a float, a string or a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Boolean(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamValue, E> {
                Ok(ParamValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamValue, E> {
                i64::try_from(v)
                    .map(ParamValue::Int)
                    .map_err(|_| E::custom(format!("integer {v} is larger than {}", i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamValue, E> {
                Ok(ParamValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ParamValue, E> {
                Ok(ParamValue::String(v))
            }
            fn visit_char<E: de::Error>(self, v: char) -> Result<ParamValue, E> {
                Ok(ParamValue::String(v.to_string()))
            }
        }
        deserializer.deserialize_any(ParamVisitor)
    }
}

/// What a parameter accepts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParamKind {
    /// An integer in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A finite float in `min..=max`; integers are accepted and widened.
    Float {
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
    },
    /// Any string.
    String {
        /// A hint for front ends: the text is long (a prompt).
        multiline: bool,
    },
    /// `true` or `false`.
    Boolean,
    /// One of a fixed list of strings.
    Choice {
        /// The accepted values.
        choices: Vec<String>,
    },
}

/// One parameter of a node type: its name, what it accepts, its default.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamSpec {
    /// The name used in workflows (`steps`).
    pub name: String,
    /// What it accepts.
    #[serde(flatten)]
    pub kind: ParamKind,
    /// The value used when a workflow gives none; a parameter without one is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<ParamValue>,
    /// One line for `weft nodes`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Why a value does not fit a parameter.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParamProblem {
    /// The literal is of the wrong kind.
    #[error("expected {expected}, found {found}")]
    WrongKind {
        /// What the spec wants, e.g. "an integer".
        expected: &'static str,
        /// The value given.
        found: String,
    },
    /// The value lies outside the spec's range.
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange {
        /// The value given.
        value: String,
        /// Smallest accepted value.
        min: String,
        /// Largest accepted value.
        max: String,
    },
    /// The value is not one of the choices.
    #[error("{value:?} is not one of the choices: {}", .choices.join(", "))]
    NotAChoice {
        /// The value given.
        value: String,
        /// The accepted values.
        choices: Vec<String>,
    },
}

impl ParamSpec {
    fn new(name: &str, kind: ParamKind) -> Self {
        ParamSpec {
            name: name.to_owned(),
            kind,
            default: None,
            description: String::new(),
        }
    }

    /// An integer over the whole `i64` range; narrow it with [`ParamSpec::range`].
    pub fn int(name: &str) -> Self {
        Self::new(
            name,
            ParamKind::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
        )
    }

    /// A float over all finite values; narrow it with [`ParamSpec::range_f`].
    pub fn float(name: &str) -> Self {
        Self::new(
            name,
            ParamKind::Float {
                min: f64::MIN,
                max: f64::MAX,
            },
        )
    }

    /// A single-line string.
    pub fn string(name: &str) -> Self {
        Self::new(name, ParamKind::String { multiline: false })
    }

    /// A long string (a prompt): the same as [`ParamSpec::string`] but for front ends.
    pub fn text(name: &str) -> Self {
        Self::new(name, ParamKind::String { multiline: true })
    }

    /// A boolean.
    pub fn boolean(name: &str) -> Self {
        Self::new(name, ParamKind::Boolean)
    }

    /// One of `choices`.
    pub fn choice(name: &str, choices: &[&str]) -> Self {
        Self::new(
            name,
            ParamKind::Choice {
                choices: choices.iter().map(|c| (*c).to_owned()).collect(),
            },
        )
    }

    /// Sets the default value.
    pub fn default(mut self, value: impl Into<ParamValue>) -> Self {
        self.default = Some(value.into());
        self
    }

    /// Narrows an integer parameter to `min..=max` (ignored on other kinds).
    pub fn range(mut self, min: i64, max: i64) -> Self {
        if let ParamKind::Int { min: lo, max: hi } = &mut self.kind {
            (*lo, *hi) = (min, max);
        }
        self
    }

    /// Narrows a float parameter to `min..=max` (ignored on other kinds).
    pub fn range_f(mut self, min: f64, max: f64) -> Self {
        if let ParamKind::Float { min: lo, max: hi } = &mut self.kind {
            (*lo, *hi) = (min, max);
        }
        self
    }

    /// Sets the one-line description.
    pub fn describe(mut self, description: &str) -> Self {
        self.description = description.to_owned();
        self
    }

    /// The port type of a link that may feed this parameter (a parameter turned into an input).
    pub fn port_type(&self) -> super::PortType {
        use super::PortType;
        match self.kind {
            ParamKind::Int { .. } => PortType::INT,
            ParamKind::Float { .. } => PortType::FLOAT,
            ParamKind::String { .. } | ParamKind::Choice { .. } => PortType::STRING,
            ParamKind::Boolean => PortType::BOOLEAN,
        }
    }

    /// Checks `value` against the spec and returns it normalized (an integer given to a float
    /// parameter becomes a float).
    pub fn check(&self, value: &ParamValue) -> Result<ParamValue, ParamProblem> {
        let wrong = |expected| {
            Err(ParamProblem::WrongKind {
                expected,
                found: value.kind_name().to_owned(),
            })
        };
        match (&self.kind, value) {
            (ParamKind::Int { min, max }, ParamValue::Int(v)) => {
                if v < min || v > max {
                    return Err(ParamProblem::OutOfRange {
                        value: v.to_string(),
                        min: min.to_string(),
                        max: max.to_string(),
                    });
                }
                Ok(value.clone())
            }
            (ParamKind::Int { .. }, _) => wrong("an integer"),
            (ParamKind::Float { min, max }, ParamValue::Int(v)) => {
                check_float(*v as f64, *min, *max)
            }
            (ParamKind::Float { min, max }, ParamValue::Float(v)) => check_float(*v, *min, *max),
            (ParamKind::Float { .. }, _) => wrong("a float"),
            (ParamKind::String { .. }, ParamValue::String(_)) => Ok(value.clone()),
            (ParamKind::String { .. }, _) => wrong("a string"),
            (ParamKind::Boolean, ParamValue::Boolean(_)) => Ok(value.clone()),
            (ParamKind::Boolean, _) => wrong("a boolean"),
            (ParamKind::Choice { choices }, ParamValue::String(s)) => {
                if choices.iter().any(|c| c == s) {
                    Ok(value.clone())
                } else {
                    Err(ParamProblem::NotAChoice {
                        value: s.clone(),
                        choices: choices.clone(),
                    })
                }
            }
            (ParamKind::Choice { .. }, _) => wrong("a string (one of the choices)"),
        }
    }

    /// Parses a command-line value (`--set node.param=VALUE`) by this spec's kind, then checks it.
    pub fn parse_arg(&self, text: &str) -> Result<ParamValue, ParamProblem> {
        let wrong = |expected| ParamProblem::WrongKind {
            expected,
            found: format!("{text:?}"),
        };
        let value = match &self.kind {
            ParamKind::Int { .. } => {
                ParamValue::Int(text.trim().parse().map_err(|_| wrong("an integer"))?)
            }
            ParamKind::Float { .. } => {
                ParamValue::Float(text.trim().parse().map_err(|_| wrong("a float"))?)
            }
            ParamKind::Boolean => {
                ParamValue::Boolean(text.trim().parse().map_err(|_| wrong("true or false"))?)
            }
            ParamKind::String { .. } | ParamKind::Choice { .. } => {
                ParamValue::String(text.to_owned())
            }
        };
        self.check(&value)
    }

    /// A value that passes [`ParamSpec::check`]: the default, else the smallest or first one. Lets
    /// validation try a node's typed parameters before a linked value is known.
    pub fn placeholder(&self) -> ParamValue {
        if let Some(default) = &self.default {
            return default.clone();
        }
        match &self.kind {
            ParamKind::Int { min, max } => ParamValue::Int(0.clamp(*min, *max)),
            ParamKind::Float { min, max } => ParamValue::Float(0f64.clamp(*min, *max)),
            ParamKind::String { .. } => ParamValue::String(String::new()),
            ParamKind::Boolean => ParamValue::Boolean(false),
            ParamKind::Choice { choices } => {
                ParamValue::String(choices.first().cloned().unwrap_or_default())
            }
        }
    }
}

fn check_float(v: f64, min: f64, max: f64) -> Result<ParamValue, ParamProblem> {
    if !v.is_finite() || v < min || v > max {
        return Err(ParamProblem::OutOfRange {
            value: format!("{v:?}"),
            min: format!("{min:?}"),
            max: format!("{max:?}"),
        });
    }
    Ok(ParamValue::Float(v))
}

impl From<i64> for ParamValue {
    fn from(v: i64) -> Self {
        ParamValue::Int(v)
    }
}
impl From<i32> for ParamValue {
    fn from(v: i32) -> Self {
        ParamValue::Int(v.into())
    }
}
impl From<f64> for ParamValue {
    fn from(v: f64) -> Self {
        ParamValue::Float(v)
    }
}
impl From<bool> for ParamValue {
    fn from(v: bool) -> Self {
        ParamValue::Boolean(v)
    }
}
impl From<&str> for ParamValue {
    fn from(v: &str) -> Self {
        ParamValue::String(v.to_owned())
    }
}
impl From<String> for ParamValue {
    fn from(v: String) -> Self {
        ParamValue::String(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_widen_to_floats_and_ranges_hold() {
        let spec = ParamSpec::float("cfg").range_f(0.0, 30.0);
        assert_eq!(spec.check(&ParamValue::Int(7)), Ok(ParamValue::Float(7.0)));
        assert!(matches!(
            spec.check(&ParamValue::Float(f64::NAN)),
            Err(ParamProblem::OutOfRange { .. })
        ));
        assert!(matches!(
            spec.check(&ParamValue::Float(30.5)),
            Err(ParamProblem::OutOfRange { .. })
        ));
        let steps = ParamSpec::int("steps").range(1, 10000);
        assert_eq!(
            steps
                .check(&ParamValue::Float(20.0))
                .unwrap_err()
                .to_string(),
            "expected an integer, found a float"
        );
    }

    #[test]
    fn command_line_values_parse_by_kind() {
        assert_eq!(
            ParamSpec::int("seed").parse_arg(" 42 "),
            Ok(ParamValue::Int(42))
        );
        assert_eq!(
            ParamSpec::float("cfg").parse_arg("3.5"),
            Ok(ParamValue::Float(3.5))
        );
        assert_eq!(
            ParamSpec::boolean("b").parse_arg("true"),
            Ok(ParamValue::Boolean(true))
        );
        assert_eq!(
            ParamSpec::string("s").parse_arg(" keep spaces "),
            Ok(ParamValue::String(" keep spaces ".into()))
        );
        let err = ParamSpec::choice("mode", &["a", "b"])
            .parse_arg("c")
            .unwrap_err();
        assert_eq!(err.to_string(), "\"c\" is not one of the choices: a, b");
        assert_eq!(
            ParamSpec::int("seed")
                .parse_arg("4x")
                .unwrap_err()
                .to_string(),
            "expected an integer, found \"4x\""
        );
    }

    #[test]
    fn placeholders_pass_their_own_check() {
        let specs = [
            ParamSpec::int("a").range(5, 9),
            ParamSpec::float("b").range_f(-3.0, -1.0),
            ParamSpec::choice("c", &["x", "y"]),
            ParamSpec::text("d"),
            ParamSpec::boolean("e"),
            ParamSpec::int("f").default(7),
        ];
        for spec in specs {
            assert!(spec.check(&spec.placeholder()).is_ok(), "{spec:?}");
        }
    }
}
