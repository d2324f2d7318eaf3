//! The check of a webhook tool's `parameters` schema, run when the config loads so that a
//! schema the model would refuse stops the bridge before it binds (not at the first call's
//! setup). Part of the config loader: it reads only config types.

use super::WebhookToolConfig;

/// The schema types Gemini understands (compared case-insensitively; sent as written).
const SCHEMA_TYPES: [&str; 7] = [
    "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL",
];

/// A webhook tool's `parameters` schema that the model would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema for tool {tool} at {path}: {reason}")]
pub struct SchemaError {
    /// The tool's name.
    pub tool: String,
    /// Dotted path inside the schema (`parameters.properties.order_id`).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Checks every tool's `parameters`: each schema node is a table with a known `type` (or an
/// `anyOf`), `properties` holds schema nodes, `items` is a schema node, and `required` lists
/// names from `properties`.
pub fn check_schemas(tools: &[WebhookToolConfig]) -> Result<(), SchemaError> {
    for t in tools {
        if let Some(params) = &t.parameters {
            check_node(params, "parameters").map_err(|(path, reason)| SchemaError {
                tool: t.name.clone(),
                path,
                reason,
            })?;
        }
    }
    Ok(())
}

fn check_node(node: &toml::Table, path: &str) -> Result<(), (String, String)> {
    let err = |p: &str, r: &str| Err((p.to_string(), r.to_string()));
    match node.get("type") {
        Some(toml::Value::String(ty)) => {
            if !SCHEMA_TYPES.iter().any(|k| k.eq_ignore_ascii_case(ty)) {
                return err(
                    &format!("{path}.type"),
                    &format!(
                        "unknown type {ty:?}; expected one of {}",
                        SCHEMA_TYPES.join(", ")
                    ),
                );
            }
        }
        Some(_) => return err(&format!("{path}.type"), "type must be a string"),
        None if node.contains_key("anyOf") => {}
        None => return err(path, "missing type"),
    }
    let props = match node.get("properties") {
        None => None,
        Some(toml::Value::Table(props)) => {
            for (name, p) in props {
                let p_path = format!("{path}.properties.{name}");
                match p {
                    toml::Value::Table(t) => check_node(t, &p_path)?,
                    _ => return err(&p_path, "a property must be a schema table"),
                }
            }
            Some(props)
        }
        Some(_) => return err(&format!("{path}.properties"), "properties must be a table"),
    };
    match node.get("items") {
        None => {}
        Some(toml::Value::Table(t)) => check_node(t, &format!("{path}.items"))?,
        Some(_) => return err(&format!("{path}.items"), "items must be a schema table"),
    }
    match node.get("required") {
        None => {}
        Some(toml::Value::Array(names)) => {
            for n in names {
                match n.as_str() {
                    Some(n) if props.is_some_and(|p| p.contains_key(n)) => {}
                    Some(n) => {
                        return err(
                            &format!("{path}.required"),
                            &format!("{n:?} is not in properties"),
                        )
                    }
                    None => return err(&format!("{path}.required"), "names must be strings"),
                }
            }
        }
        Some(_) => {
            return err(
                &format!("{path}.required"),
                "required must be an array of names",
            )
        }
    }
    Ok(())
}
