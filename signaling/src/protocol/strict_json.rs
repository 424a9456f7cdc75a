//! Free-form JSON read as strictly as the frame around it: `serde_json::Value` keeps the last
//! of a key written twice, which would let a payload (a broadcast's `data`) pass changed where
//! the frame itself is refused (`docs/protocol.md`: a key written twice is `invalid_message`).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Reads any JSON value, refusing an object with a key written twice at any depth.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    StrictValue::deserialize(deserializer).map(|strict| strict.0)
}

/// A [`Value`] whose objects had no key twice.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictValue, E> {
        Number::from_f64(v)
            .map(|n| StrictValue(Value::Number(n)))
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<StrictValue, D::Error> {
        StrictValue::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<StrictValue, A::Error> {
        let mut map = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{key}` in an object"
                )));
            }
            let StrictValue(value) = entries.next_value()?;
            map.insert(key, value);
        }
        Ok(StrictValue(Value::Object(map)))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Carrier {
        #[serde(deserialize_with = "super::deserialize")]
        data: serde_json::Value,
    }

    #[test]
    fn a_key_written_twice_is_refused_at_any_depth() {
        for bad in [
            r#"{"data":{"a":1,"a":2}}"#,
            r#"{"data":[{"x":{"b":true,"b":false}}]}"#,
        ] {
            let error = serde_json::from_str::<Carrier>(bad).unwrap_err();
            assert!(
                error.to_string().contains("duplicate key"),
                "{bad}: {error}"
            );
        }
        // As a broadcast's `data`: required (`null` is a value), and checked inside the
        // tagged frame as in a plain struct.
        use crate::protocol::ClientMessage;
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"broadcast"}"#).is_err());
        let null = r#"{"type":"broadcast","data":null}"#;
        assert!(serde_json::from_str::<ClientMessage>(null).is_ok());
        let twice = r#"{"type":"broadcast","data":{"k":{"a":1,"a":2}}}"#;
        assert!(serde_json::from_str::<ClientMessage>(twice).is_err());
        let good = r#"{"data":{"a":[1,-2,3.5,"s",null,{"b":{}}],"c":true}}"#;
        let value = serde_json::from_str::<Carrier>(good).expect("parses").data;
        let plain: serde_json::Value = serde_json::from_str(good).expect("plain");
        assert_eq!(value, plain["data"]);
    }
}
