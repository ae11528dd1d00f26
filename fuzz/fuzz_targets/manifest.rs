//! Manifest and index parsing: any bytes and Content-Type give a manifest or an error, never a
//! panic; an accepted manifest keeps its bytes and their digest. Input: a JSON body as is (no
//! Content-Type), or one byte choosing the Content-Type followed by the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 5] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "text/plain; charset=utf-8",
];

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.split_first() {
        Some((b'{', _)) | None => (None, data),
        Some((choice, rest)) => (Some(TYPES[*choice as usize % TYPES.len()]), rest),
    };
    let bytes = bytes::Bytes::copy_from_slice(body);
    if let Ok(manifest) = oci::Manifest::from_bytes(bytes.clone(), content_type, "fuzz") {
        assert_eq!(manifest.bytes, bytes);
        assert_eq!(manifest.digest, oci::Digest::of(&bytes));
        let _ = manifest.content("fuzz");
    }
});
