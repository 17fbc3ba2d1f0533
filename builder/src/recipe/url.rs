//! URL inputs: which strings are URLs, and which URLs a recipe or lock may
//! name (http(s), a host, nothing that could be read as an option).

/// Longest URL accepted (curl and logs stay readable).
pub const MAX_URL: usize = 2048;

/// Whether `s` is written as a URL input (`http://` or `https://`).
pub fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Checks a URL a recipe or lock names: http(s), a host, no white space,
/// control characters or quotes (it is passed to curl as one argument, and
/// shown in messages).
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("URL {url:?} must start with https:// or http://"))?;
    if url.len() > MAX_URL {
        return Err(format!("URL is longer than {MAX_URL} characters"));
    }
    if let Some(c) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err(format!(
            "URL {url:?} contains {c:?}; percent-encode it (e.g. %20 for a space)"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "URL {url:?} carries credentials; cairn never stores secrets in a recipe or lock"
        ));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("URL {url:?} has no host"));
    }
    Ok(())
}
