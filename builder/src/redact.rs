//! URLs as kib shows them: without user name and password. Its own module because both the
//! checksum sources and the image cache print URLs (it used to live in `cache`, which made
//! `checksum` and `cache` import each other).

use url::Url;

/// Displays a URL without its user name and password (`https://<redacted>@host/…`).
#[derive(Debug, Clone, Copy)]
pub struct RedactedUrl<'a>(pub &'a Url);

impl std::fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.0;
        if url.username().is_empty() && url.password().is_none() {
            return f.write_str(url.as_str());
        }
        let mut clean = url.clone();
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        let text = clean.as_str();
        match text.find("://") {
            Some(i) => write!(f, "{}<redacted>@{}", &text[..i + 3], &text[i + 3..]),
            None => f.write_str(text),
        }
    }
}

/// `url` as text without credentials.
pub fn redact_url(url: &Url) -> String {
    RedactedUrl(url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        let url = Url::parse("https://alice:s3cret@example.com/images/x.qcow2").unwrap();
        let shown = redact_url(&url);
        assert_eq!(shown, "https://<redacted>@example.com/images/x.qcow2");
        let plain = Url::parse("https://example.com/x").unwrap();
        assert_eq!(redact_url(&plain), "https://example.com/x");
        let token = Url::parse("https://tok@example.com/x").unwrap();
        assert!(!redact_url(&token).contains("tok@"));
    }
}
