//! Finds where a node of a YAML document is, by path: the one locator
//! behind the image manifest's and the customer configuration's errors.
//!
//! serde_norway reports positions only for errors raised while a node is
//! being deserialized. Validation runs after parsing, so to point at the
//! offending node we deserialize the document once more with a seed that
//! walks the path and fails on purpose at its end; the error then carries
//! the node's line and column.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// `sources[1].password`.
pub fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

const MARKER: &str = "levee-locate-marker";

/// Line and column (1-based) of the deepest node of `path` present in `text`.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let de = serde_norway::Deserializer::from_str(text);
    match (Locator { path }).deserialize(de) {
        Ok(()) => None,
        Err(e) => {
            if !e.to_string().contains(MARKER) {
                return None;
            }
            e.location().map(|l| (l.line(), l.column()))
        }
    }
}

struct Locator<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Locator<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locator<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(MARKER));
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == *want {
                return map.next_value_seed(Locator { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        // The key is missing: point at the mapping that should hold it.
        Err(de::Error::custom(MARKER))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(MARKER));
        };
        let mut i = 0;
        while i < *want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(MARKER));
            }
            i += 1;
        }
        match seq.next_element_seed(Locator { path: rest })? {
            Some(()) => Ok(()),
            None => Err(de::Error::custom(MARKER)),
        }
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(MARKER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_nodes_and_missing_keys() {
        let text = "customer: acme\nsources:\n  - name: a\n    path: /x\n  - name: b\n    smb: smb://u@h/s\n";
        assert_eq!(locate(text, &[Seg::Key("customer")]), Some((1, 11)));
        let src1 = [Seg::Key("sources"), Seg::Index(1)];
        let (line, _) = locate(text, &src1).unwrap();
        assert_eq!(line, 5);
        let smb = [Seg::Key("sources"), Seg::Index(1), Seg::Key("smb")];
        assert_eq!(locate(text, &smb), Some((6, 10)));
        // Missing key: the mapping that lacks it.
        let pw = [Seg::Key("sources"), Seg::Index(1), Seg::Key("password")];
        assert_eq!(locate(text, &pw).map(|p| p.0), Some(5));
        assert_eq!(display_path(&pw), "sources[1].password");
    }
}
