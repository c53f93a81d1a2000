//! The offsite store protocol (`levee serve --store`), pure: request paths,
//! upload headers and deletion requests as they come off the network, and
//! the answers both sides read. The server's I/O is in
//! `provisioner/src/offsite/`, the appliance's in `agent/src/replicate/`;
//! `docs/OFFSITE.md` describes the whole exchange.
//!
//! Every file lives at `/store/v1/<customer>/<repository id>/<kind>/<sha256>`
//! and its name is the SHA-256 of its bytes, which the store checks.
//!
//! ```
//! use levee_proto::offsite::{FileKind, Request};
//! let r = Request::parse("PUT", "/store/v1/acme/0123456789abcdef0123456789abcdef/index/\
//!     e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
//! assert!(matches!(r, Request::Put(f) if f.kind == FileKind::Index));
//! assert!(Request::parse("DELETE", "/store/v1/acme/0123456789abcdef/data/x").is_err());
//! ```

use serde::{Deserialize, Serialize};

/// Where the store's routes start.
pub const PREFIX: &str = "/store/v1/";
/// Request header: where this body starts in the file.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// Request header: the whole file's length.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// Largest file the store takes (packs are far smaller).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Largest deletion request body.
pub const MAX_DELETION_BYTES: usize = 4 << 20;
/// Most files named in one deletion request.
pub const MAX_DELETION_FILES: usize = 20_000;

/// The kinds of repository file a store keeps (never locks or prune
/// state: those are the appliance's own business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Config,
    Keys,
    Data,
    Index,
    Snapshots,
}

impl FileKind {
    pub const ALL: [FileKind; 5] = [
        FileKind::Config,
        FileKind::Keys,
        FileKind::Data,
        FileKind::Index,
        FileKind::Snapshots,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Config => "config",
            FileKind::Keys => "keys",
            FileKind::Data => "data",
            FileKind::Index => "index",
            FileKind::Snapshots => "snapshots",
        }
    }

    pub fn parse(s: &str) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A repository's namespace on a store: its customer and repository id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub customer: String,
    pub repo: String,
}

impl Namespace {
    /// Checks both parts: a customer name (1-64 letters, digits, `-`, `_`,
    /// `.`, not leading `.`) and a repository id (16-64 lowercase hex).
    pub fn new(customer: &str, repo: &str) -> Result<Namespace, OffsiteError> {
        let name_ok = (1..=64).contains(&customer.len())
            && !customer.starts_with('.')
            && customer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(OffsiteError::Customer(customer.chars().take(80).collect()));
        }
        if !is_lower_hex(repo, 16..=64) {
            return Err(OffsiteError::Repo(repo.chars().take(80).collect()));
        }
        Ok(Namespace {
            customer: customer.into(),
            repo: repo.into(),
        })
    }

    /// `customer/repo`, as in the URL and on disk.
    pub fn path(&self) -> String {
        format!("{}/{}", self.customer, self.repo)
    }
}

/// One file of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileRef {
    pub ns: Namespace,
    pub kind: FileKind,
    /// SHA-256 of the bytes, 64 lowercase hex digits.
    pub name: String,
}

impl FileRef {
    /// The file's URL path (what [`Request::parse`] reads back).
    pub fn path(&self) -> String {
        format!(
            "{PREFIX}{}/{}/{}",
            self.ns.path(),
            self.kind.as_str(),
            self.name
        )
    }
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `HEAD .../<kind>/<sha256>`: complete (length), partial (offset) or
    /// absent.
    Head(FileRef),
    /// `GET .../<kind>/<sha256>`: the file.
    Get(FileRef),
    /// `PUT .../<kind>/<sha256>` with [`UPLOAD_OFFSET`] and
    /// [`UPLOAD_LENGTH`]: a part of the file, appended at the offset.
    Put(FileRef),
    /// `POST .../<kind>/<sha256>`: the store re-reads the file and checks it
    /// against its name; a file that fails is moved aside (quarantined),
    /// so it can be uploaded again. Answers [`Verified`].
    Verify(FileRef),
    /// `GET .../<kind>/`: what the namespace holds of that kind.
    List(Namespace, FileKind),
    /// `POST .../deletions`: a [`DeletionRequest`].
    Delete(Namespace),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsiteError {
    #[error("not a store path (expected {PREFIX}<customer>/<repository id>/<kind>/<sha256>)")]
    Path,
    #[error("`{0}` is not a customer name")]
    Customer(String),
    #[error("`{0}` is not a repository id (16-64 lowercase hex digits)")]
    Repo(String),
    #[error("`{0}` is not a file kind (config, keys, data, index, snapshots)")]
    Kind(String),
    #[error("`{0}` is not a file name (a SHA-256: 64 lowercase hex digits)")]
    Name(String),
    #[error("{method} is not allowed here: files are create-only; ask for deletion with POST .../deletions")]
    Method { method: String },
    #[error("header `{header}`: {reason}")]
    Header {
        header: &'static str,
        reason: String,
    },
    #[error("deletion request: {0}")]
    Deletion(String),
}

fn is_lower_hex(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a file name: a SHA-256 in lowercase hex.
pub fn check_name(name: &str) -> Result<(), OffsiteError> {
    if is_lower_hex(name, 64..=64) {
        Ok(())
    } else {
        Err(OffsiteError::Name(name.chars().take(80).collect()))
    }
}

impl Request {
    /// Reads a request's method and path (no query, no percent-encoding:
    /// nothing in a valid path needs either).
    pub fn parse(method: &str, path: &str) -> Result<Request, OffsiteError> {
        let rest = path.strip_prefix(PREFIX).ok_or(OffsiteError::Path)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (customer, repo) = match parts.as_slice() {
            [c, r, ..] => (*c, *r),
            _ => return Err(OffsiteError::Path),
        };
        let ns = Namespace::new(customer, repo)?;
        let method_err = || OffsiteError::Method {
            method: method.chars().take(16).collect(),
        };
        match parts.as_slice() {
            [_, _, "deletions"] => match method {
                "POST" => Ok(Request::Delete(ns)),
                _ => Err(method_err()),
            },
            [_, _, kind, name] => {
                let kind = FileKind::parse(kind)
                    .ok_or_else(|| OffsiteError::Kind(kind.chars().take(80).collect()))?;
                if name.is_empty() {
                    return match method {
                        "GET" => Ok(Request::List(ns, kind)),
                        _ => Err(method_err()),
                    };
                }
                check_name(name)?;
                let file = FileRef {
                    ns,
                    kind,
                    name: (*name).into(),
                };
                match method {
                    "HEAD" => Ok(Request::Head(file)),
                    "GET" => Ok(Request::Get(file)),
                    "PUT" => Ok(Request::Put(file)),
                    "POST" => Ok(Request::Verify(file)),
                    _ => Err(method_err()),
                }
            }
            _ => Err(OffsiteError::Path),
        }
    }
}

/// A part's place in its file, from the upload headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadRange {
    pub offset: u64,
    pub length: u64,
}

impl UploadRange {
    /// Reads [`UPLOAD_OFFSET`] and [`UPLOAD_LENGTH`] (decimal); the offset
    /// lies within the file, the file within [`MAX_FILE_BYTES`].
    pub fn parse(offset: Option<&str>, length: Option<&str>) -> Result<UploadRange, OffsiteError> {
        let num = |header: &'static str, v: Option<&str>| -> Result<u64, OffsiteError> {
            let v = v.ok_or(OffsiteError::Header {
                header,
                reason: "missing".into(),
            })?;
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OffsiteError::Header {
                    header,
                    reason: "not a decimal number".into(),
                });
            }
            v.parse().map_err(|_| OffsiteError::Header {
                header,
                reason: "out of range".into(),
            })
        };
        let offset = num(UPLOAD_OFFSET, offset)?;
        let length = num(UPLOAD_LENGTH, length)?;
        if length > MAX_FILE_BYTES {
            return Err(OffsiteError::Header {
                header: UPLOAD_LENGTH,
                reason: format!("{length} bytes; a store takes files up to {MAX_FILE_BYTES}"),
            });
        }
        if offset > length {
            return Err(OffsiteError::Header {
                header: UPLOAD_OFFSET,
                reason: format!("{offset} lies beyond the file's length {length}"),
            });
        }
        Ok(UploadRange { offset, length })
    }
}

/// The answer to a [`Request::Verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The stored bytes hash to the name.
    pub ok: bool,
}

/// One file of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub name: String,
    pub size: u64,
}

/// An appliance's request that files go, carried out by the store after its
/// grace period (files that follow the appliance's `forget`/`prune`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionRequest {
    pub files: Vec<DeletionItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionItem {
    pub kind: FileKind,
    pub name: String,
}

impl DeletionRequest {
    /// Reads and checks a request body: bounded, every name a SHA-256.
    pub fn parse(bytes: &[u8]) -> Result<DeletionRequest, OffsiteError> {
        if bytes.len() > MAX_DELETION_BYTES {
            return Err(OffsiteError::Deletion(format!(
                "{} bytes; at most {MAX_DELETION_BYTES}",
                bytes.len()
            )));
        }
        let r: DeletionRequest =
            serde_json::from_slice(bytes).map_err(|e| OffsiteError::Deletion(e.to_string()))?;
        if r.files.is_empty() || r.files.len() > MAX_DELETION_FILES {
            return Err(OffsiteError::Deletion(format!(
                "names {} files; 1 to {MAX_DELETION_FILES}",
                r.files.len()
            )));
        }
        for f in &r.files {
            check_name(&f.name)?;
        }
        Ok(r)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of strings: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "/store/v1/acme/00112233445566778899aabbccddeeff";
    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn paths_round_trip_and_methods_are_limited() {
        for kind in FileKind::ALL {
            let p = format!("{NS}/{}/{H}", kind.as_str());
            let Request::Put(f) = Request::parse("PUT", &p).expect("put") else {
                panic!("not a put")
            };
            assert_eq!(f.path(), p);
            assert!(matches!(Request::parse("HEAD", &p), Ok(Request::Head(_))));
            assert!(matches!(Request::parse("GET", &p), Ok(Request::Get(_))));
            assert!(matches!(Request::parse("POST", &p), Ok(Request::Verify(_))));
            for m in ["DELETE", "PATCH", "OPTIONS"] {
                assert!(
                    matches!(Request::parse(m, &p), Err(OffsiteError::Method { .. })),
                    "{m}"
                );
            }
        }
        assert!(matches!(
            Request::parse("GET", &format!("{NS}/data/")),
            Ok(Request::List(_, FileKind::Data))
        ));
        assert!(matches!(
            Request::parse("POST", &format!("{NS}/deletions")),
            Ok(Request::Delete(_))
        ));
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        let cases = [
            (
                "/store/v1/../00112233445566778899aabbccddeeff/data/",
                "customer",
            ),
            ("/store/v1/acme/0011/data/", "repository id"),
            (
                "/store/v1/acme/00112233445566778899AABBCCDDEEFF/data/",
                "repository id",
            ),
            (&format!("{NS}/locks/{H}"), "file kind"),
            (&format!("{NS}/data/{}", &H[1..]), "file name"),
            (&format!("{NS}/data/{H}/x"), "store path"),
            (&format!("{NS}/data/../../x"), "store path"),
            ("/other", "store path"),
        ];
        for (p, what) in cases {
            let e = Request::parse("GET", p).expect_err(p).to_string();
            assert!(e.contains(what), "{p}: {e}");
        }
    }

    #[test]
    fn upload_headers_are_bounded() {
        assert_eq!(
            UploadRange::parse(Some("5"), Some("10")),
            Ok(UploadRange {
                offset: 5,
                length: 10
            })
        );
        for (o, l) in [
            (None, Some("1")),
            (Some("1"), None),
            (Some("11"), Some("10")),
            (Some("-1"), Some("10")),
            (Some("+1"), Some("10")),
            (Some("0"), Some("99999999999999999999")),
            (Some("0"), Some("5000000000")),
        ] {
            assert!(UploadRange::parse(o, l).is_err(), "{o:?} {l:?}");
        }
    }

    #[test]
    fn deletion_requests_name_hashes_only() {
        let r = DeletionRequest {
            files: vec![DeletionItem {
                kind: FileKind::Data,
                name: H.into(),
            }],
        };
        assert_eq!(DeletionRequest::parse(&r.to_bytes()), Ok(r));
        assert!(DeletionRequest::parse(br#"{"files":[]}"#).is_err());
        assert!(DeletionRequest::parse(br#"{"files":[{"kind":"data","name":"../x"}]}"#).is_err());
        assert!(DeletionRequest::parse(br#"{"files":[{"kind":"locks","name":"ab"}]}"#).is_err());
    }
}
