//! SHA-256 checksums of base images, and the CHECKSUM files that publish them.
//!
//! A checksum is given on the command line or in `kib.toml` as one of:
//! - `sha256:HEX`: the value itself;
//! - `file:URL`: a CHECKSUM file to download (`file:https://…/CHECKSUM`);
//! - `file:PATH`: a CHECKSUM file on disk.
//!
//! CHECKSUM files come in two formats and [`parse_checksum_file`] reads both:
//! - **BSD** (`sha256sum --tag`, Rocky Linux, Fedora): `SHA256 (name) = hex`, with `#` comments
//!   such as `# name: 544997376 bytes`; entries for other algorithms are skipped;
//! - **GNU** (`sha256sum`): `hex  name` or `hex *name` (binary mode).
//!
//! PGP clear-signed files (`-----BEGIN PGP SIGNED MESSAGE-----`) are read too; the signature is
//! not checked.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use kib_manifest::Hint;

pub use kib_manifest::{Checksum, ChecksumParseError, sha256_file};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// Errors from parsing checksums and CHECKSUM files.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// A `sha256:HEX` that is not one.
    #[error(transparent)]
    Parse(#[from] ChecksumParseError),
    /// A checksum source that is neither `sha256:HEX` nor `file:URL|PATH`.
    #[error("Checksum `{input}` is neither `sha256:HEX`, `file:URL` nor `file:PATH`")]
    BadSource {
        /// What was given.
        input: String,
    },
    /// A line of a CHECKSUM file that is neither BSD nor GNU format.
    #[error(
        "Line {line} of the checksum file is neither `SHA256 (name) = hex` nor `hex  name`: `{text}`"
    )]
    BadLine {
        /// The line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// A line of a CHECKSUM file whose digest is malformed.
    #[error("Line {line} of the checksum file has a bad SHA-256 digest")]
    BadLineDigest {
        /// The line number, from 1.
        line: usize,
        /// Why the digest is bad.
        #[source]
        source: ChecksumParseError,
    },
    /// The image is not listed in the CHECKSUM file.
    #[error(
        "`{name}` is not listed in the checksum file (it lists: {})",
        list_names(listed)
    )]
    NotListed {
        /// The image file name that was looked up.
        name: String,
        /// The names the file does list.
        listed: Vec<String>,
    },
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        "no SHA-256 entries".to_owned()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Hint for ChecksumError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ChecksumError::Parse(e) => e.hint(),
            ChecksumError::BadSource { .. } => Some(
                "pass `--base-checksum sha256:HEX`, `file:https://…/CHECKSUM` or `file:PATH`".to_owned(),
            ),
            ChecksumError::NotListed { .. } => Some(
                "the image name must match an entry exactly; check the image URL, or pass the checksum as `sha256:HEX`"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Where a CHECKSUM file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumFile {
    /// Downloaded over HTTP(S).
    Url(Url),
    /// Read from disk.
    Path(PathBuf),
}

/// Where the expected checksum of an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumSource {
    /// The checksum itself (`sha256:HEX`).
    Value(Checksum),
    /// A CHECKSUM file in which the image is looked up by file name (`file:URL`, `file:PATH`).
    File(ChecksumFile),
}

impl FromStr for ChecksumSource {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("file:") {
            if rest.is_empty() {
                return Err(ChecksumError::BadSource {
                    input: s.to_owned(),
                });
            }
            if let Ok(url) = Url::parse(rest) {
                match url.scheme() {
                    "http" | "https" => return Ok(ChecksumSource::File(ChecksumFile::Url(url))),
                    "file" => {
                        if let Ok(path) = url.to_file_path() {
                            return Ok(ChecksumSource::File(ChecksumFile::Path(path)));
                        }
                        return Err(ChecksumError::BadSource {
                            input: s.to_owned(),
                        });
                    }
                    _ => {}
                }
            }
            // `file:/abs/path` or `file:relative/path`.
            return Ok(ChecksumSource::File(ChecksumFile::Path(PathBuf::from(
                rest,
            ))));
        }
        if s.contains(':') {
            return Ok(ChecksumSource::Value(s.parse()?));
        }
        Err(ChecksumParseError::MissingAlgorithm {
            input: s.to_owned(),
        }
        .into())
    }
}

impl fmt::Display for ChecksumSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChecksumSource::Value(c) => c.fmt(f),
            ChecksumSource::File(ChecksumFile::Url(url)) => {
                write!(f, "file:{}", crate::redact::RedactedUrl(url))
            }
            ChecksumSource::File(ChecksumFile::Path(path)) => write!(f, "file:{}", path.display()),
        }
    }
}

impl Serialize for ChecksumSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChecksumSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One SHA-256 entry of a CHECKSUM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumEntry {
    /// The file name as listed.
    pub name: String,
    /// Its checksum.
    pub checksum: Checksum,
}

/// Parses a CHECKSUM file in BSD or GNU format (both may be mixed) into its SHA-256 entries.
///
/// Blank lines, `#` comments and PGP armor are skipped, as are BSD entries for other
/// algorithms (`SHA512 (name) = …`). Anything else that is not an entry is an error.
pub fn parse_checksum_file(text: &str) -> Result<Vec<ChecksumEntry>, ChecksumError> {
    let mut entries = Vec::new();
    let mut in_signature = false;
    let mut after_pgp_header = false;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim_end_matches('\r').trim();
        if in_signature {
            if line.starts_with("-----END PGP SIGNATURE") {
                in_signature = false;
            }
            continue;
        }
        if line.starts_with("-----BEGIN PGP SIGNATURE") {
            in_signature = true;
            continue;
        }
        if line.starts_with("-----BEGIN PGP SIGNED MESSAGE") {
            after_pgp_header = true;
            continue;
        }
        if after_pgp_header {
            // Armor headers (`Hash: SHA256`) end at the first blank line.
            if line.is_empty() {
                after_pgp_header = false;
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Dash-escaped lines of clear-signed text.
        let line = line.strip_prefix("- ").unwrap_or(line);
        if let Some(entry) = parse_bsd_line(line, number)? {
            if let Some(entry) = entry {
                entries.push(entry);
            }
            continue;
        }
        entries.push(parse_gnu_line(line, number)?);
    }
    Ok(entries)
}

/// `ALGO (name) = hex`. Returns `None` if the line is not BSD format, `Some(None)` for another
/// algorithm.
fn parse_bsd_line(
    line: &str,
    number: usize,
) -> Result<Option<Option<ChecksumEntry>>, ChecksumError> {
    let Some(open) = line.find(" (") else {
        return Ok(None);
    };
    let algorithm = &line[..open];
    if algorithm.is_empty()
        || !algorithm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Ok(None);
    }
    let Some(close) = line.rfind(") = ") else {
        return Ok(None);
    };
    if close < open + 2 {
        return Ok(None);
    }
    let name = &line[open + 2..close];
    let hex = &line[close + 4..];
    if !algorithm.eq_ignore_ascii_case("sha256") {
        return Ok(Some(None));
    }
    let checksum = Checksum::from_hex(hex).map_err(|e| ChecksumError::BadLineDigest {
        line: number,
        source: e,
    })?;
    Ok(Some(Some(ChecksumEntry {
        name: name.to_owned(),
        checksum,
    })))
}

/// `hex  name` or `hex *name`.
fn parse_gnu_line(line: &str, number: usize) -> Result<ChecksumEntry, ChecksumError> {
    let bad = || ChecksumError::BadLine {
        line: number,
        text: line.to_owned(),
    };
    let Some((hex, rest)) = line.split_once(char::is_whitespace) else {
        return Err(bad());
    };
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let name = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('*'))
        .unwrap_or(rest);
    let name = name.strip_prefix('*').unwrap_or(name);
    if name.is_empty() {
        return Err(bad());
    }
    let checksum = Checksum::from_hex(hex).map_err(|e| ChecksumError::BadLineDigest {
        line: number,
        source: e,
    })?;
    Ok(ChecksumEntry {
        name: name.to_owned(),
        checksum,
    })
}

/// Finds the SHA-256 of `image_file_name` in a CHECKSUM file (BSD or GNU format).
///
/// A name listed with a directory (`./x.qcow2`, `images/x.qcow2`) matches by its last part.
pub fn lookup(file_text: &str, image_file_name: &str) -> Result<Checksum, ChecksumError> {
    let entries = parse_checksum_file(file_text)?;
    let base = |n: &str| n.rsplit('/').next().unwrap_or(n).to_owned();
    if let Some(e) = entries.iter().find(|e| e.name == image_file_name) {
        return Ok(e.checksum.clone());
    }
    if let Some(e) = entries.iter().find(|e| base(&e.name) == image_file_name) {
        return Ok(e.checksum.clone());
    }
    Err(ChecksumError::NotListed {
        name: image_file_name.to_owned(),
        listed: entries.into_iter().map(|e| e.name).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9fc9e9ff16888bb68ac39b0392e25c9c92684d50c85f1cce6ab549363bbc4b48";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn checksum_round_trips() {
        let c: Checksum = format!("sha256:{}", A.to_uppercase()).parse().unwrap();
        assert_eq!(c.hex(), A);
        assert_eq!(c.to_string(), format!("sha256:{A}"));
        assert_eq!(c.to_string().parse::<Checksum>().unwrap(), c);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            format!("\"sha256:{A}\"")
        );
    }

    #[test]
    fn checksum_errors() {
        assert!(matches!(
            A.parse::<Checksum>(),
            Err(ChecksumParseError::MissingAlgorithm { .. })
        ));
        assert!(matches!(
            format!("md5:{A}").parse::<Checksum>(),
            Err(ChecksumParseError::UnsupportedAlgorithm { .. })
        ));
        let err = "sha256:abc".parse::<Checksum>().unwrap_err();
        assert!(matches!(err, ChecksumParseError::BadHex { len: 3, .. }));
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let not_hex = format!("sha256:{}", "g".repeat(64));
        assert!(matches!(
            not_hex.parse::<Checksum>(),
            Err(ChecksumParseError::BadHex { .. })
        ));
    }

    #[test]
    fn source_forms() {
        let v: ChecksumSource = format!("sha256:{A}").parse().unwrap();
        assert!(matches!(v, ChecksumSource::Value(_)));
        let u: ChecksumSource =
            "file:https://dl.rockylinux.org/pub/rocky/10/images/x86_64/CHECKSUM"
                .parse()
                .unwrap();
        assert!(
            matches!(&u, ChecksumSource::File(ChecksumFile::Url(url)) if url.host_str() == Some("dl.rockylinux.org"))
        );
        assert_eq!(
            u.to_string(),
            "file:https://dl.rockylinux.org/pub/rocky/10/images/x86_64/CHECKSUM"
        );
        let p: ChecksumSource = "file:/srv/images/CHECKSUM".parse().unwrap();
        assert_eq!(
            p,
            ChecksumSource::File(ChecksumFile::Path("/srv/images/CHECKSUM".into()))
        );
        let r: ChecksumSource = "file:images/SHA256SUMS".parse().unwrap();
        assert_eq!(
            r,
            ChecksumSource::File(ChecksumFile::Path("images/SHA256SUMS".into()))
        );
        let f: ChecksumSource = "file:file:///srv/CHECKSUM".parse().unwrap();
        assert_eq!(
            f,
            ChecksumSource::File(ChecksumFile::Path("/srv/CHECKSUM".into()))
        );
        assert!(matches!(
            "file:".parse::<ChecksumSource>(),
            Err(ChecksumError::BadSource { .. })
        ));
        assert!(matches!(
            A.parse::<ChecksumSource>(),
            Err(ChecksumError::Parse(
                ChecksumParseError::MissingAlgorithm { .. }
            ))
        ));
    }

    #[test]
    fn source_display_hides_credentials() {
        let u: ChecksumSource = "file:https://user:hunter2@example.com/CHECKSUM"
            .parse()
            .unwrap();
        let shown = u.to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("user"),
            "{shown}"
        );
    }

    #[test]
    fn bsd_format_with_comments() {
        let text = format!(
            "# Rocky-10-GenericCloud-Base.latest.x86_64.qcow2: 544997376 bytes\n\
             SHA256 (Rocky-10-GenericCloud-Base.latest.x86_64.qcow2) = {A}\n\
             # Rocky-10-GenericCloud-LVM.latest.x86_64.qcow2: 1 bytes\n\
             SHA256 (Rocky-10-GenericCloud-LVM.latest.x86_64.qcow2) = {B}\n\
             SHA512 (Rocky-10-GenericCloud-LVM.latest.x86_64.qcow2) = {A}{A}\n"
        );
        assert_eq!(
            lookup(&text, "Rocky-10-GenericCloud-Base.latest.x86_64.qcow2")
                .unwrap()
                .hex(),
            A
        );
        assert_eq!(
            lookup(&text, "Rocky-10-GenericCloud-LVM.latest.x86_64.qcow2")
                .unwrap()
                .hex(),
            B
        );
        assert_eq!(parse_checksum_file(&text).unwrap().len(), 2);
    }

    #[test]
    fn bsd_name_with_parentheses_and_spaces() {
        let text = format!("SHA256 (my image (1).qcow2) = {A}\n");
        assert_eq!(lookup(&text, "my image (1).qcow2").unwrap().hex(), A);
    }

    #[test]
    fn gnu_format_text_and_binary() {
        let text = format!("{A}  disk.qcow2\n{B} *other.img\n");
        assert_eq!(lookup(&text, "disk.qcow2").unwrap().hex(), A);
        assert_eq!(lookup(&text, "other.img").unwrap().hex(), B);
    }

    #[test]
    fn crlf_and_directories() {
        let text = format!("# comment\r\nSHA256 (a.qcow2) = {A}\r\n\r\n{B}  ./sub/b.qcow2\r\n");
        assert_eq!(lookup(&text, "a.qcow2").unwrap().hex(), A);
        assert_eq!(lookup(&text, "b.qcow2").unwrap().hex(), B);
    }

    #[test]
    fn pgp_clearsigned() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# x.qcow2: 5 bytes\nSHA256 (x.qcow2) = {A}\n\
             -----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n"
        );
        assert_eq!(lookup(&text, "x.qcow2").unwrap().hex(), A);
    }

    #[test]
    fn missing_entry_lists_names() {
        let text = format!("SHA256 (a.qcow2) = {A}\n{B}  b.qcow2\n");
        let err = lookup(&text, "c.qcow2").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`c.qcow2`") && msg.contains("`a.qcow2`, `b.qcow2`"),
            "{msg}"
        );
        assert!(err.hint().is_some());
        let empty = lookup("# nothing\n", "c.qcow2").unwrap_err();
        assert!(empty.to_string().contains("no SHA-256 entries"), "{empty}");
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let (c, len) = sha256_file(&path).unwrap();
        assert_eq!(
            c.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(len, 3);
    }

    #[test]
    fn bad_hex_in_file() {
        let err = lookup("SHA256 (a.qcow2) = 1234\n", "a.qcow2").unwrap_err();
        assert!(
            matches!(err, ChecksumError::BadLineDigest { line: 1, .. }),
            "{err:?}"
        );
        let err = lookup(&format!("# c\n{}  a.qcow2\n", &A[..40]), "a.qcow2").unwrap_err();
        assert!(
            matches!(err, ChecksumError::BadLineDigest { line: 2, .. }),
            "{err:?}"
        );
        let err = lookup("this is not a checksum file\n", "a.qcow2").unwrap_err();
        assert!(
            matches!(err, ChecksumError::BadLine { line: 1, .. }),
            "{err:?}"
        );
    }
}
