//! Read-compatibility vectors for the repository format (current version),
//! from outside this code: RFC 4231 for the keyed chunk id (HMAC-SHA256)
//! and the GCM specification's AES-256 test cases (McGrew and Viega, as
//! used in NIST's GCM validation) for the object encryption. Unlike golden
//! files made by the code itself, these catch a change that is wrong in
//! both the writer and the reader. Keep them when the format changes: a
//! newer version must still read what this one wrote.

use levee_proto::repo::crypto::{decrypt, encrypt_with_nonce};
use levee_proto::repo::MasterKey;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}

/// A master key whose MAC half is `mac_key`, zero-padded to 32 bytes; HMAC
/// pads keys shorter than its block with zeros, so the RFC's shorter keys
/// give the same MAC.
fn with_mac_key(mac_key: &[u8]) -> MasterKey {
    let mut b = [0u8; 64];
    b[32..32 + mac_key.len()].copy_from_slice(mac_key);
    MasterKey::from_bytes(&b)
}

#[test]
fn blob_id_is_hmac_sha256_rfc4231() {
    // RFC 4231 section 4, test cases 1 to 4 (keys of at most 32 bytes).
    let cases: [(Vec<u8>, Vec<u8>, &str); 4] = [
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        ),
        (
            (1..=25).collect(),
            vec![0xcd; 50],
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        ),
    ];
    for (i, (key, data, want)) in cases.iter().enumerate() {
        let id = with_mac_key(key).blob_id(data);
        assert_eq!(hex::encode(id.0), *want, "RFC 4231 test case {}", i + 1);
    }
}

/// `nonce || ciphertext || tag` for the GCM spec's AES-256 cases without
/// additional data (13, 14, 15): what the repository stores for an object.
#[test]
fn objects_are_aes_256_gcm_spec_vectors() {
    let k15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    let cases = [
        (
            "13",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
            "",
            "",
            "530f8afbc74536b9a963b4f1c4cb738b",
        ),
        (
            "14",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
            "00000000000000000000000000000000",
            "cea7403d4d606b6e074ec5d3baf39d18",
            "d0d1c8a799996bf0265b98b5d48ab919",
        ),
        (
            "15",
            k15,
            "cafebabefacedbaddecaf888",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        ),
    ];
    for (name, key, iv, pt, ct, tag) in cases {
        let key: [u8; 32] = unhex(key).try_into().expect("32-byte key");
        let nonce: [u8; 12] = unhex(iv).try_into().expect("12-byte IV");
        let stored = [unhex(iv), unhex(ct), unhex(tag)].concat();
        assert_eq!(
            hex::encode(encrypt_with_nonce(&key, &nonce, &unhex(pt))),
            hex::encode(&stored),
            "GCM test case {name}: encryption"
        );
        assert_eq!(
            decrypt(&key, &stored).expect("the vector decrypts"),
            unhex(pt),
            "GCM test case {name}: decryption"
        );
        // One flipped tag bit: refused, not returned.
        let mut bad = stored.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            decrypt(&key, &bad).is_err(),
            "GCM test case {name}: forged tag"
        );
    }
    // Through the master key too: its first half is the encryption key.
    let mut b = [0u8; 64];
    b[..32].copy_from_slice(&unhex(k15));
    let stored = [
        unhex("cafebabefacedbaddecaf888"),
        unhex(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        ),
        unhex("b094dac5d93471bdec1a502270e3cc6c"),
    ]
    .concat();
    assert_eq!(
        MasterKey::from_bytes(&b)
            .decrypt(&stored)
            .expect("decrypts"),
        unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
        )
    );
}

/// A format 2 pack assembled here byte by byte from the layout that
/// docs/REPOSITORY.md ("Pack files", "Frames") documents, not by the
/// writer's code, then read with the library's parsers: a blob stored
/// alone and a frame of two members, random filler, the zero-padded
/// version 3 header sealed with XAES-256-GCM, the trailer.
#[test]
fn pack_assembled_from_the_documented_layout_is_read() {
    use levee_proto::repo::pack::{padme, parse_trailer};
    use levee_proto::repo::{frame, Cipher, PackHeader};

    let key = MasterKey::from_bytes(&[7u8; 64]).with_cipher(Cipher::Xaes256Gcm);
    let alone = b"a chunk stored alone".to_vec();
    let (m1, m2) = (b"first small file".to_vec(), b"second".to_vec());

    // Frame plaintext: u16 LE count, u32 LE raw lengths, members back to back.
    let mut frame_plain = vec![2, 0];
    frame_plain.extend_from_slice(&(m1.len() as u32).to_le_bytes());
    frame_plain.extend_from_slice(&(m2.len() as u32).to_le_bytes());
    frame_plain.extend_from_slice(&m1);
    frame_plain.extend_from_slice(&m2);

    let mut pack = Vec::new();
    let ct0 = key.xaes_seal(&[1u8; 24], &alone, b"");
    let ct1 = key.xaes_seal(&[2u8; 24], &frame_plain, b"");
    pack.extend_from_slice(&ct0);
    pack.extend_from_slice(&ct1);

    // Entry: kind u8, compression u8, id [32], offset u32, stored length
    // u32, raw length u32, member u16 (all LE).
    let entry =
        |out: &mut Vec<u8>, id: [u8; 32], off: usize, len: usize, raw: usize, member: u16| {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&id);
            out.extend_from_slice(&(off as u32).to_le_bytes());
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&(raw as u32).to_le_bytes());
            out.extend_from_slice(&member.to_le_bytes());
        };
    let mut header = b"LVPH".to_vec();
    header.push(3);
    header.extend_from_slice(&3u32.to_le_bytes());
    let frame_raw = frame_plain.len();
    entry(
        &mut header,
        key.blob_id(&alone).0,
        0,
        ct0.len(),
        alone.len(),
        0,
    );
    entry(
        &mut header,
        key.blob_id(&m1).0,
        ct0.len(),
        ct1.len(),
        frame_raw,
        1,
    );
    entry(
        &mut header,
        key.blob_id(&m2).0,
        ct0.len(),
        ct1.len(),
        frame_raw,
        2,
    );
    assert_eq!(header.len(), 9 + 3 * 48);
    header.resize(padme(header.len() as u64) as usize, 0);
    let sealed = key.xaes_seal(&[3u8; 24], &header, b"");
    let data_len = pack.len();
    let whole = (data_len + sealed.len() + 8) as u64;
    pack.resize(data_len + (padme(whole) - whole) as usize, 0x5a);
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    pack.extend_from_slice(b"LVP1");
    assert_eq!(pack.len() as u64, padme(pack.len() as u64));

    // Read it back the way every reader does.
    let (start, len) = parse_trailer(&pack[pack.len() - 8..], pack.len() as u64).expect("trailer");
    let start = start as usize;
    let plain = key
        .decrypt(&pack[start..start + len as usize])
        .expect("header decrypts");
    let parsed = PackHeader::parse(&plain).expect("header parses");
    parsed
        .check_bounds(start as u64)
        .expect("blobs inside the data area");
    assert_eq!(parsed.blobs.len(), 3);
    for (entry, want) in parsed.blobs.iter().zip([&alone, &m1, &m2]) {
        let (off, len) = (entry.offset as usize, entry.length as usize);
        let stored = key.decrypt(&pack[off..off + len]).expect("blob decrypts");
        let got = match entry.member {
            0 => stored,
            k => frame::member(&stored, k).expect("frame member").to_vec(),
        };
        assert_eq!(&got, want);
        assert_eq!(
            key.blob_id(&got),
            entry.id,
            "keyed id of member {}",
            entry.member
        );
    }
    // Anything but zeros in the header padding is refused.
    let mut bad = header.clone();
    *bad.last_mut().expect("padded header") = 1;
    assert!(PackHeader::parse(&bad).is_err());
}
