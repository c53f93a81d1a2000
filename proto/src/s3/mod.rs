//! S3 locations and the few S3 answers Levee reads itself (pure: the
//! requests are signed by `rusty-s3` and sent by the caller).
//!
//! A direct S3 target and the offsite store's S3 backend lay a repository
//! out the same way as the store's directory: `<prefix>/<customer>/<repo
//! id>/<kind>/<sha256>`, so a copy reads the same wherever it lives.

use crate::offsite::{FileKind, Namespace};

/// The S3 client itself (I/O), for the crates that talk to S3.
#[cfg(feature = "s3-client")]
pub mod client;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3UrlError {
    #[error("{0:?}: an S3 location is s3://BUCKET[/PREFIX]")]
    Scheme(String),
    #[error("{0:?}: the bucket name must be 3-63 lowercase letters, digits, '-' or '.'")]
    Bucket(String),
    #[error(
        "{0:?}: the prefix may hold letters, digits and '-', '_', '.', '/' (no '..', no '//')"
    )]
    Prefix(String),
}

/// `s3://bucket[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, S3UrlError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| S3UrlError::Scheme(url.into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !ok_bucket {
            return Err(S3UrlError::Bucket(bucket.into()));
        }
        let prefix = prefix.trim_end_matches('/');
        let ok_prefix = prefix.len() <= 512
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            && (prefix.is_empty() || prefix.split('/').all(|s| !s.is_empty() && s != ".."));
        if !ok_prefix {
            return Err(S3UrlError::Prefix(prefix.into()));
        }
        Ok(S3Url {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    /// `<prefix>/` or nothing: where every key of this location starts.
    pub fn base(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// The key prefix of one namespace, ending in `/`.
    pub fn ns_prefix(&self, ns: &Namespace) -> String {
        format!("{}{}/", self.base(), ns.path())
    }

    /// The key prefix of one kind in one namespace, ending in `/`.
    pub fn kind_prefix(&self, ns: &Namespace, kind: FileKind) -> String {
        format!("{}{}/", self.ns_prefix(ns), kind.as_str())
    }

    /// The key of one file.
    pub fn key(&self, ns: &Namespace, kind: FileKind, name: &str) -> String {
        format!("{}{name}", self.kind_prefix(ns, kind))
    }
}

/// The text of the first `<tag>...</tag>` in an S3 XML answer (S3's
/// answers Levee reads are flat and small; no entities in the values it
/// looks at).
pub fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml[start..start + len].trim())
}

/// Whether a `GetBucketVersioning` answer says versioning is on.
pub fn versioning_enabled(xml: &str) -> bool {
    xml_value(xml, "Status") == Some("Enabled")
}

/// Whether a `GetObjectLockConfiguration` answer says Object Lock is on.
pub fn object_lock_enabled(xml: &str) -> bool {
    xml_value(xml, "ObjectLockEnabled") == Some("Enabled")
}

/// One part of a multipart upload, as `ListParts` tells it (some servers,
/// s3s-fs among them, leave the ETag out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: u16,
    pub size: u64,
    pub etag: Option<String>,
}

/// The parts of a `ListParts` answer, and the marker of the next page if
/// it is truncated.
pub fn list_parts(xml: &str) -> (Vec<Part>, Option<u16>) {
    let mut parts = Vec::new();
    for chunk in xml.split("<Part>").skip(1) {
        let body = chunk.split("</Part>").next().unwrap_or("");
        let number = xml_value(body, "PartNumber").and_then(|v| v.parse().ok());
        let size = xml_value(body, "Size").and_then(|v| v.parse().ok());
        if let (Some(number), Some(size)) = (number, size) {
            parts.push(Part {
                number,
                size,
                etag: xml_value(body, "ETag").map(|e| e.replace("&quot;", "\"")),
            });
        }
    }
    let next = (xml_value(xml, "IsTruncated") == Some("true"))
        .then(|| xml_value(xml, "NextPartNumberMarker").and_then(|v| v.parse().ok()))
        .flatten();
    (parts, next)
}

/// The `Code` of an S3 error answer (`NoSuchUpload`, `AccessDenied`...).
pub fn error_code(xml: &str) -> Option<&str> {
    xml_value(xml, "Code")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_lay_files_out_like_the_store() {
        let u = S3Url::parse("s3://acme-backups/levee/site1/").expect("url");
        assert_eq!(u.bucket, "acme-backups");
        assert_eq!(u.prefix, "levee/site1");
        let ns = Namespace::new("acme", "0123456789abcdef").expect("ns");
        assert_eq!(
            u.key(&ns, FileKind::Data, "ff"),
            "levee/site1/acme/0123456789abcdef/data/ff"
        );
        let root = S3Url::parse("s3://bkt").expect("root");
        assert_eq!(
            root.kind_prefix(&ns, FileKind::Index),
            "acme/0123456789abcdef/index/"
        );
        for bad in [
            "https://x/y",
            "s3://",
            "s3://Upper",
            "s3://ok-bucket/../x",
            "s3://ok-bucket/a//b",
            "s3://ok-bucket/a b",
            "s3://-bad",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versioning_object_lock_and_error_codes_are_read() {
        let v = r#"<?xml version="1.0"?><VersioningConfiguration xmlns="x"><Status>Enabled</Status></VersioningConfiguration>"#;
        assert!(versioning_enabled(v));
        assert!(!versioning_enabled("<VersioningConfiguration/>"));
        assert!(!versioning_enabled("<Status>Suspended</Status>"));
        assert!(object_lock_enabled(
            "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>"
        ));
        assert_eq!(
            error_code("<Error><Code>NoSuchUpload</Code><Message>m</Message></Error>"),
            Some("NoSuchUpload")
        );
        assert_eq!(error_code("garbage"), None);
        let (parts, next) = list_parts(
            "<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>\
             <Part><PartNumber>1</PartNumber><ETag>&quot;ab&quot;</ETag><Size>5</Size></Part>\
             <Part><PartNumber>2</PartNumber><Size>3</Size></Part></ListPartsResult>",
        );
        assert_eq!(
            parts,
            [
                Part {
                    number: 1,
                    size: 5,
                    etag: Some("\"ab\"".into())
                },
                Part {
                    number: 2,
                    size: 3,
                    etag: None
                }
            ]
        );
        assert_eq!(next, Some(2));
    }
}
