//! `WWW-Authenticate` challenge parsing: any header value gives a challenge or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    let _ = oci::auth::Challenge::parse(header, "registry.example.com");
});
