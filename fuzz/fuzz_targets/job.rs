//! Execution input validation: any text is a job or an error naming fields, never a panic; an
//! accepted job serialises to an input that is accepted again, unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match replication::Job::parse(text) {
        Ok(valid) => {
            let rendered = serde_json::to_string(&valid.job).expect("a job serialises");
            let again = replication::Job::parse(&rendered).expect("a rendered job is valid");
            assert_eq!(again.job, valid.job);
        }
        Err(replication::Error::InvalidInput { problems }) => assert!(!problems.is_empty()),
        Err(other) => panic!("validation gave a non-input error: {other}"),
    }
});
