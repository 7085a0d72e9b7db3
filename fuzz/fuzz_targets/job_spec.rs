//! A submitted job spec, TOML or JSON, through exactly what `POST /v1/jobs` does before the
//! control plane sees it (`decode_job_spec`: size, parse, validation, limits).
//!
//! Invariants: nothing panics; a refusal is a 4xx with a short message; an accepted spec is
//! valid, within the limits, and survives the JSON round trip the store and the API make.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_server::http::job_body::{BodyFormat, decode_job_spec};
use warden_server::limits::JobLimits;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = if selector & 1 == 0 {
        BodyFormat::Toml
    } else {
        BodyFormat::Json
    };
    let limits = JobLimits::default();
    match decode_job_spec(format, body, &limits) {
        Ok(spec) => {
            assert!(spec.validate().is_ok(), "accepted but invalid: {spec:?}");
            assert!(limits.check(&spec).is_ok());
            // The store keeps specs as JSON and the API answers them as JSON: what was
            // accepted must come back the same.
            let json = serde_json::to_vec(&spec).expect("a spec serializes");
            let unlimited = JobLimits {
                max_spec_bytes: usize::MAX,
                ..limits
            };
            let back = decode_job_spec(BodyFormat::Json, &json, &unlimited)
                .unwrap_or_else(|e| panic!("JSON of an accepted spec is refused: {e:?}\n{spec:?}"));
            assert_eq!(back, spec, "the JSON round trip changed the spec");
        }
        Err(e) => {
            assert!(e.code().status().is_client_error(), "{e:?}");
            assert!(
                !e.message().is_empty() && e.message().len() <= 1024,
                "{e:?}"
            );
        }
    }
});
