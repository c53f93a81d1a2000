use std::fmt;
use std::str::FromStr;

/// A malformed hex id.
#[derive(Debug, thiserror::Error)]
#[error("invalid id {0:?}: expected 64 hex digits")]
pub struct IdParseError(pub String);

/// 32 bytes that name something: the common part of every id type.
pub type Id = [u8; 32];

macro_rules! define_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex, the form used in file names and JSON.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// First 8 hex digits, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, IdParseError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError(s.to_string()))?;
                Ok(Self(out))
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// Keyed id of a blob (chunk or tree): HMAC-SHA256(mac key, plaintext).
    BlobId
);
define_id!(
    /// Id of a pack, index or snapshot file: SHA-256 of the file's bytes, so
    /// the offsite store can verify storage integrity without the key.
    PackId
);
