//! Reading a submitted job spec: choosing TOML or JSON from the `Content-Type`, parsing with the
//! parser's own line/column in the error, telling an unknown field from other mistakes, and
//! validating the spec — against what can work and against the server's [`JobLimits`] — before
//! anything is stored. [`decode_job_spec`] is the whole path a `POST /v1/jobs` body takes
//! (public so that the fuzz targets exercise exactly it).

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use warden_core::{HealthCheck, JobSpec};

use crate::api_error::{ErrorCode, HttpError};
use crate::limits::JobLimits;

/// The two formats a job spec may be submitted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// The documented job file format (`docs/api.md`).
    Toml,
    /// The same fields as a JSON object.
    Json,
}

/// The body's format from its `Content-Type`: `application/json` is JSON; `application/toml`,
/// `text/plain` or no header at all is TOML. Anything else, or a charset other than UTF-8, is
/// refused rather than guessed at.
pub fn body_format(headers: &HeaderMap) -> Result<BodyFormat, HttpError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(BodyFormat::Toml);
    };
    let unsupported = |what: &str| {
        HttpError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "unsupported content type {what}; send the job spec as application/toml \
                 (or text/plain) or as application/json"
            ),
        )
    };
    let text = value
        .to_str()
        .map_err(|_| unsupported("(not visible ASCII)"))?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let format = match essence.as_str() {
        "application/json" => BodyFormat::Json,
        "application/toml" | "text/plain" => BodyFormat::Toml,
        _ => return Err(unsupported(&format!("{text:?}"))),
    };
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = value.trim().trim_matches('"');
            if !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii"))
            {
                return Err(unsupported(&format!("{text:?} (only UTF-8 is accepted)")));
            }
        }
    }
    Ok(format)
}

/// Everything a submitted body goes through before the control plane sees it: its size against
/// `limits.max_spec_bytes` (`413`), parsing (`400`), validation (`422 invalid_job_spec`) and
/// the other job limits (`422 limit_exceeded`); each error names the field where one is to
/// blame.
pub fn decode_job_spec(
    format: BodyFormat,
    body: &[u8],
    limits: &JobLimits,
) -> Result<JobSpec, HttpError> {
    if body.len() > limits.max_spec_bytes {
        return Err(HttpError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the job spec is {} bytes; this server accepts at most {} \
                 (limits.jobs.max_spec_bytes)",
                body.len(),
                limits.max_spec_bytes
            ),
        ));
    }
    let spec = parse_job_spec(format, body)?;
    check_job_spec(&spec)?;
    limits
        .check(&spec)
        .map_err(|e| HttpError::new(ErrorCode::LimitExceeded, e.to_string()).with_field(e.field))?;
    Ok(spec)
}

/// Parse `body` as a job spec. Nothing is validated yet: see [`check_job_spec`].
pub fn parse_job_spec(format: BodyFormat, body: &[u8]) -> Result<JobSpec, HttpError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let valid = &body[..e.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        HttpError::new(
            ErrorCode::MalformedBody,
            format!("body is not valid UTF-8: bad byte at line {line}, column {column}"),
        )
    })?;
    match format {
        BodyFormat::Toml => toml::from_str(text).map_err(|e| {
            // The error's own `Display` quotes the whole offending line, which may be most of
            // a megabyte; the location and the message are enough.
            let message = e.message().trim_end();
            let full = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!("TOML parse error at line {line}, column {column}: {message}")
                }
                None => format!("TOML parse error: {message}"),
            };
            classify(message, full)
        }),
        BodyFormat::Json => {
            // A derived struct also accepts a JSON array of its fields in order; a job spec is
            // only ever an object.
            if !text.trim_start().starts_with('{') {
                return Err(HttpError::new(
                    ErrorCode::MalformedBody,
                    "a JSON job spec must be an object ({\"name\": ..., \"kind\": ..., ...})",
                ));
            }
            serde_json::from_str(text).map_err(|e| {
                let full = e.to_string();
                classify(&full, full.clone())
            })
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Turn a parser error into an API error. `message` is the parser's own message (for TOML
/// without the location), `full` what the client sees (with line and column).
fn classify(message: &str, full: String) -> HttpError {
    match unknown_field(message) {
        Some(field) => HttpError::new(ErrorCode::UnknownField, full).with_field(field),
        None => HttpError::new(ErrorCode::MalformedBody, full),
    }
}

/// The field named by serde's `deny_unknown_fields` error ("unknown field `x`, expected ...").
/// Neither parser exposes this case structurally, so serde's fixed wording is the only handle;
/// should it change, unknown fields are still rejected, as `malformed_body`.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// Reject a spec that can never work, naming the field, before the control plane sees it.
pub fn check_job_spec(spec: &JobSpec) -> Result<(), HttpError> {
    spec.validate().map_err(|e| {
        let field = e.field.to_string();
        HttpError::new(ErrorCode::InvalidJobSpec, e.to_string()).with_field(field)
    })?;
    check_hostile_strings(spec)
}

/// Strings that `JobSpec::validate` lets through but that cannot reach a process intact: a NUL
/// byte cannot be passed in an environment variable or an argument, and a control character in
/// a health-check path would end up inside the agent's HTTP request line.
fn check_hostile_strings(spec: &JobSpec) -> Result<(), HttpError> {
    let invalid = |field: &str, reason: &str| {
        HttpError::new(
            ErrorCode::InvalidJobSpec,
            format!("invalid `{field}`: {reason}"),
        )
        .with_field(field)
    };
    if spec.env.values().any(|v| v.contains('\0')) {
        return Err(invalid("env", "values must not contain NUL bytes"));
    }
    match &spec.health {
        Some(HealthCheck::Exec { command, .. }) if command.iter().any(|a| a.contains('\0')) => {
            Err(invalid("health.command", "must not contain NUL bytes"))
        }
        Some(HealthCheck::Http { path, .. })
            if path.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            Err(invalid(
                "health.path",
                "must not contain whitespace or control characters",
            ))
        }
        Some(HealthCheck::Exec { .. } | HealthCheck::Http { .. } | HealthCheck::Tcp { .. })
        | None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(content_type: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h
    }

    #[test]
    fn content_type_selects_the_format() {
        let cases: [(Option<&'static str>, Option<BodyFormat>); 9] = [
            (None, Some(BodyFormat::Toml)),
            (Some("application/toml"), Some(BodyFormat::Toml)),
            (Some("text/plain; charset=utf-8"), Some(BodyFormat::Toml)),
            (Some("Application/JSON"), Some(BodyFormat::Json)),
            (
                Some("application/json; charset=\"UTF-8\""),
                Some(BodyFormat::Json),
            ),
            (Some("application/json; charset=latin1"), None),
            (Some("application/x-www-form-urlencoded"), None),
            (Some("application/xml"), None),
            (Some(""), None),
        ];
        for (ct, want) in cases {
            let got = body_format(&headers(ct));
            match want {
                Some(f) => assert_eq!(got, Ok(f), "{ct:?}"),
                None => {
                    let err = got.expect_err("refused");
                    assert_eq!(err.code, ErrorCode::UnsupportedMediaType, "{ct:?}");
                }
            }
        }
    }

    #[test]
    fn every_shipped_example_passes_the_servers_checks() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).expect("examples/") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "toml") {
                let body = std::fs::read(&path).expect("read");
                decode_job_spec(BodyFormat::Toml, &body, &JobLimits::default())
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} examples in {}", dir.display());
    }

    #[test]
    fn unknown_fields_are_told_apart() {
        let err = parse_job_spec(
            BodyFormat::Toml,
            b"name = \"a\"\nkind = \"service\"\ncommand = \"x\"\ncolour = \"red\"\n",
        )
        .expect_err("unknown field");
        assert_eq!(err.code, ErrorCode::UnknownField);
        assert_eq!(err.field.as_deref(), Some("colour"));
        assert!(err.message.contains("line 4"), "{}", err.message);

        let err = parse_job_spec(
            BodyFormat::Json,
            br#"{"name": "a", "kind": "service", "command": "x", "colour": 1}"#,
        )
        .expect_err("unknown field");
        assert_eq!(err.code, ErrorCode::UnknownField);
        assert_eq!(err.field.as_deref(), Some("colour"));

        let err = parse_job_spec(BodyFormat::Toml, b"name = \"a\"\nkind = \"cronjob\"\n")
            .expect_err("bad variant");
        assert_eq!(err.code, ErrorCode::MalformedBody);
    }

    #[test]
    fn non_utf8_is_located() {
        let err = parse_job_spec(BodyFormat::Toml, b"name = \"a\"\ncommand = \"\xff\"\n")
            .expect_err("not UTF-8");
        assert_eq!(err.code, ErrorCode::MalformedBody);
        assert!(err.message.contains("line 2, column 12"), "{}", err.message);
    }

    #[test]
    fn json_must_be_an_object() {
        let err = parse_job_spec(
            BodyFormat::Json,
            br#"["a", "service", 1, "x", [], {}, {}, null]"#,
        )
        .expect_err("array");
        assert_eq!(err.code, ErrorCode::MalformedBody);
    }

    #[test]
    fn hostile_strings_are_rejected_with_their_field() {
        let cases = [
            ("env = { A = \"x\\u0000y\" }", "env"),
            (
                "[health]\nkind = \"exec\"\ncommand = [\"/bin/true\", \"a\\u0000\"]",
                "health.command",
            ),
            (
                "[health]\nkind = \"http\"\nport = 80\npath = \"/x\\r\\nHost: evil\"",
                "health.path",
            ),
            ("args = [\"a\\u0000\"]", "command"),
        ];
        for (extra, field) in cases {
            let text = format!("name = \"a\"\nkind = \"service\"\ncommand = \"x\"\n{extra}\n");
            let spec = parse_job_spec(BodyFormat::Toml, text.as_bytes()).expect("parses");
            let err = check_job_spec(&spec).expect_err(field);
            assert_eq!(err.code, ErrorCode::InvalidJobSpec);
            assert_eq!(err.field.as_deref(), Some(field));
        }
    }
}
