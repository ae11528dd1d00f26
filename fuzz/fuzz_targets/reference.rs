//! Image reference parsing: never a panic, and an accepted reference reads back the same from
//! its own rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(reference) = oci::Reference::parse(text) {
        let again = oci::Reference::parse(&reference.to_string())
            .expect("a rendered reference parses");
        assert_eq!(again, reference);
    }
    let _ = oci::Digest::parse(text);
    let _ = oci::reference::validate_tag(text);
    let _ = oci::reference::validate_repository_name(text);
});
