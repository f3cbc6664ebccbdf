//! JSON views of answers. Values are bytes on the wire; in JSON a value that is UTF-8 text
//! is a string and any other value becomes `value_hex`, so that nothing is lost and
//! nothing prints as a list of numbers. The command line and the HTTP gateway share this.

use serde::Serialize;
use serde_json::Value;

/// The value as JSON with every `value` byte list made readable.
pub fn readable<T: Serialize>(value: &T) -> Result<Value, serde_json::Error> {
    let mut json = serde_json::to_value(value)?;
    rewrite_values(&mut json);
    Ok(json)
}

fn rewrite_values(json: &mut Value) {
    match json {
        Value::Object(map) => {
            if let Some(bytes) = map.get("value").and_then(as_bytes) {
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        map.insert("value".into(), Value::String(text));
                    }
                    Err(not_text) => {
                        let hex: String = not_text
                            .as_bytes()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        map.remove("value");
                        map.insert("value_hex".into(), Value::String(hex));
                    }
                }
            }
            for (key, inner) in map.iter_mut() {
                if key != "value" {
                    rewrite_values(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_values),
        _ => {}
    }
}

fn as_bytes(json: &Value) -> Option<Vec<u8>> {
    json.as_array()?
        .iter()
        .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_values_become_strings_and_others_hex() {
        let input = json!({"keys": [{"key": "a", "value": [104, 105]},
                                    {"key": "b", "value": [255, 0]}],
                           "value": []});
        let out = readable(&input).unwrap();
        assert_eq!(out["keys"][0]["value"], "hi");
        assert_eq!(out["keys"][1]["value_hex"], "ff00");
        assert!(out["keys"][1].get("value").is_none());
        assert_eq!(out["value"], "");
    }
}
