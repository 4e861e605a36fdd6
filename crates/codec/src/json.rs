//! JSON parsing with the path of the failing field in the message.

use serde::de::DeserializeOwned;

/// Why JSON did not parse.
pub(crate) struct JsonError {
    /// `field: problem at line L column C`, or just the problem at the top level.
    pub(crate) message: String,
    /// The text is JSON but of the wrong shape (rather than not JSON at all).
    pub(crate) is_data: bool,
}

/// Parses one JSON value of type `T`; nothing but white space may follow it.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        JsonError {
            message: if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            },
            is_data: inner.is_data(),
        }
    })?;
    de.end().map_err(|e| JsonError {
        message: e.to_string(),
        is_data: false,
    })?;
    Ok(result)
}
