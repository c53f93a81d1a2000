//! TFTP packets (RFC 1350, with the OACK of RFC 2347): parsing and encoding
//! only, no sockets.

use thiserror::Error;

/// Largest block size RFC 2348 allows (65535 less IP and UDP headers).
pub const MAX_BLKSIZE: u16 = 65464;
/// Block size when none is negotiated.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Bytes of opcode + block number in front of every DATA payload.
pub const DATA_HEADER_LEN: usize = 4;

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("packet of {0} bytes is too short for an opcode")]
    NoOpcode(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{what} packet is truncated: {len} bytes, need at least {need}")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{field} at byte {offset} is not terminated by a NUL byte")]
    Unterminated { field: &'static str, offset: usize },
    #[error("{field} at byte {offset} is not valid UTF-8")]
    NotUtf8 { field: &'static str, offset: usize },
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("empty file name")]
    EmptyFilename,
    #[error("{field} contains a NUL byte and cannot be encoded")]
    EmbeddedNul { field: &'static str },
}

/// Transfer mode of a request. Compared case-insensitively on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Netascii,
    Octet,
    Mail,
}

impl Mode {
    fn parse(s: &str) -> Result<Self, WireError> {
        if s.eq_ignore_ascii_case("octet") {
            Ok(Mode::Octet)
        } else if s.eq_ignore_ascii_case("netascii") {
            Ok(Mode::Netascii)
        } else if s.eq_ignore_ascii_case("mail") {
            Ok(Mode::Mail)
        } else {
            Err(WireError::UnknownMode(s.to_owned()))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// TFTP error codes (RFC 1350 section 5, RFC 2347 code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTid,
    FileExists,
    NoSuchUser,
    OptionNegotiation,
    Other(u16),
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionNegotiation,
            other => ErrorCode::Other(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionNegotiation => 8,
            ErrorCode::Other(code) => code,
        }
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    /// Options in the order sent; names keep the client's spelling.
    pub options: Vec<(String, String)>,
}

impl Request {
    /// The value of option `name` (case-insensitive; first one wins).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: Vec<u8> },
    Ack { block: u16 },
    Error { code: ErrorCode, message: String },
    Oack { options: Vec<(String, String)> },
}

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// Reads NUL-terminated strings from a packet, remembering offsets for errors.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn next_str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::Unterminated {
                field,
                offset: start,
            })?;
        let bytes = &rest[..nul];
        self.pos = start + nul + 1;
        std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8 {
            field,
            offset: start,
        })
    }

    /// Option name/value pairs up to the end of the packet.
    fn options(&mut self) -> Result<Vec<(String, String)>, WireError> {
        let mut options = Vec::new();
        while !self.at_end() {
            let name = self.next_str("option name")?;
            if self.at_end() {
                return Err(WireError::OptionWithoutValue(name.to_owned()));
            }
            let value = self.next_str("option value")?;
            options.push((name.to_owned(), value.to_owned()));
        }
        Ok(options)
    }
}

fn u16_at(buf: &[u8], offset: usize) -> Option<u16> {
    let bytes = buf.get(offset..offset + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

impl Packet {
    /// Parses one datagram. Never panics, whatever the bytes.
    pub fn parse(buf: &[u8]) -> Result<Packet, WireError> {
        let opcode = u16_at(buf, 0).ok_or(WireError::NoOpcode(buf.len()))?;
        match opcode {
            OP_RRQ | OP_WRQ => {
                let mut fields = Fields { buf, pos: 2 };
                let filename = fields.next_str("file name")?;
                if filename.is_empty() {
                    return Err(WireError::EmptyFilename);
                }
                let mode = Mode::parse(fields.next_str("mode")?)?;
                let options = fields.options()?;
                let request = Request {
                    filename: filename.to_owned(),
                    mode,
                    options,
                };
                Ok(if opcode == OP_RRQ {
                    Packet::Rrq(request)
                } else {
                    Packet::Wrq(request)
                })
            }
            OP_DATA => {
                let block = u16_at(buf, 2).ok_or(WireError::Truncated {
                    what: "DATA",
                    len: buf.len(),
                    need: 4,
                })?;
                Ok(Packet::Data {
                    block,
                    data: buf[4..].to_vec(),
                })
            }
            OP_ACK => {
                let block = u16_at(buf, 2).ok_or(WireError::Truncated {
                    what: "ACK",
                    len: buf.len(),
                    need: 4,
                })?;
                Ok(Packet::Ack { block })
            }
            OP_ERROR => {
                let code = u16_at(buf, 2).ok_or(WireError::Truncated {
                    what: "ERROR",
                    len: buf.len(),
                    need: 5,
                })?;
                // Peers send all sorts of messages; a lossy decode keeps the
                // packet useful for logging. A missing NUL is tolerated for
                // the same reason.
                let rest = &buf[4..];
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                let message = String::from_utf8_lossy(&rest[..end]).into_owned();
                Ok(Packet::Error {
                    code: ErrorCode::from_u16(code),
                    message,
                })
            }
            OP_OACK => {
                let mut fields = Fields { buf, pos: 2 };
                Ok(Packet::Oack {
                    options: fields.options()?,
                })
            }
            other => Err(WireError::UnknownOpcode(other)),
        }
    }

    /// Appends the encoded packet to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        fn put_str(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), WireError> {
            if s.as_bytes().contains(&0) {
                return Err(WireError::EmbeddedNul { field });
            }
            out.extend_from_slice(s.as_bytes());
            out.push(0);
            Ok(())
        }
        fn put_options(out: &mut Vec<u8>, options: &[(String, String)]) -> Result<(), WireError> {
            for (name, value) in options {
                put_str(out, name, "option name")?;
                put_str(out, value, "option value")?;
            }
            Ok(())
        }
        match self {
            Packet::Rrq(req) | Packet::Wrq(req) => {
                let op = if matches!(self, Packet::Rrq(_)) {
                    OP_RRQ
                } else {
                    OP_WRQ
                };
                if req.filename.is_empty() {
                    return Err(WireError::EmptyFilename);
                }
                out.extend_from_slice(&op.to_be_bytes());
                put_str(out, &req.filename, "file name")?;
                put_str(out, req.mode.as_str(), "mode")?;
                put_options(out, &req.options)?;
            }
            Packet::Data { block, data } => {
                write_data_header(out, *block);
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                put_str(out, message, "error message")?;
            }
            Packet::Oack { options } => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                put_options(out, options)?;
            }
        }
        Ok(())
    }

    /// The encoded packet. Fails only for strings that contain NUL bytes
    /// (which [`Packet::parse`] never produces) or an empty file name.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// An ERROR packet, for replies built by the server. NUL bytes in the
    /// message are dropped so that encoding cannot fail.
    pub fn error(code: ErrorCode, message: &str) -> Packet {
        Packet::Error {
            code,
            message: message.replace('\0', ""),
        }
    }
}

/// Appends the 4-byte DATA header; the server writes payloads in place after it.
pub fn write_data_header(out: &mut Vec<u8>, block: u16) {
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Writes the 4-byte DATA header into `out[..4]`.
pub fn put_data_header(out: &mut [u8; DATA_HEADER_LEN], block: u16) {
    out[..2].copy_from_slice(&OP_DATA.to_be_bytes());
    out[2..].copy_from_slice(&block.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(packet: Packet) {
        let bytes = packet.to_bytes().expect("encodable");
        assert_eq!(Packet::parse(&bytes), Ok(packet));
    }

    #[test]
    fn round_trips() {
        round_trip(Packet::Rrq(Request {
            filename: "pxelinux.0".into(),
            mode: Mode::Octet,
            options: vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "0".into()),
            ],
        }));
        round_trip(Packet::Wrq(Request {
            filename: "a/b".into(),
            mode: Mode::Netascii,
            options: vec![],
        }));
        round_trip(Packet::Data {
            block: 65535,
            data: vec![1, 2, 3],
        });
        round_trip(Packet::Data {
            block: 0,
            data: vec![],
        });
        round_trip(Packet::Ack { block: 7 });
        round_trip(Packet::Error {
            code: ErrorCode::AccessViolation,
            message: "no".into(),
        });
        round_trip(Packet::Error {
            code: ErrorCode::Other(99),
            message: String::new(),
        });
        round_trip(Packet::Oack {
            options: vec![("windowsize".into(), "16".into())],
        });
        round_trip(Packet::Oack { options: vec![] });
    }

    #[test]
    fn golden_rrq_as_atftp_sends_it() {
        let bytes = b"\x00\x01file\x00octet\x00blksize\x001468\x00windowsize\x0016\x00";
        let Ok(Packet::Rrq(req)) = Packet::parse(bytes) else {
            panic!("not an RRQ")
        };
        assert_eq!(req.filename, "file");
        assert_eq!(req.option("BLKSIZE"), Some("1468"));
        assert_eq!(req.option("windowsize"), Some("16"));
        assert_eq!(
            Packet::Rrq(req).to_bytes().expect("encodable"),
            bytes.to_vec()
        );
    }

    #[test]
    fn mode_is_case_insensitive() {
        let Ok(Packet::Rrq(req)) = Packet::parse(b"\x00\x01f\x00OcTeT\x00") else {
            panic!()
        };
        assert_eq!(req.mode, Mode::Octet);
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(Packet::parse(b""), Err(WireError::NoOpcode(0)));
        assert_eq!(Packet::parse(b"\x00"), Err(WireError::NoOpcode(1)));
        assert_eq!(Packet::parse(b"\x00\x09"), Err(WireError::UnknownOpcode(9)));
        assert!(matches!(
            Packet::parse(b"\x00\x04\x01"),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x03"),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x01file"),
            Err(WireError::Unterminated { .. })
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x01file\x00octet"),
            Err(WireError::Unterminated { .. })
        ));
        assert_eq!(
            Packet::parse(b"\x00\x01\x00octet\x00"),
            Err(WireError::EmptyFilename)
        );
        assert!(matches!(
            Packet::parse(b"\x00\x01f\x00binary\x00"),
            Err(WireError::UnknownMode(_))
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(WireError::OptionWithoutValue(_))
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x01\xff\xfe\x00octet\x00"),
            Err(WireError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn error_without_nul_is_tolerated() {
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x01gone"),
            Ok(Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "gone".into()
            })
        );
    }

    #[test]
    fn nul_in_strings_is_refused_when_encoding() {
        let packet = Packet::Oack {
            options: vec![("a\0".into(), "1".into())],
        };
        assert_eq!(
            packet.to_bytes(),
            Err(WireError::EmbeddedNul {
                field: "option name"
            })
        );
        assert!(Packet::error(ErrorCode::NotDefined, "a\0b")
            .to_bytes()
            .is_ok());
    }
}
