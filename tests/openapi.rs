//! `GET /openapi.json`: a valid OpenAPI 3.1 document (openapi-spec-validator) naming
//! every route the ingress serves, and schemathesis, fuzzing a live `sluice dev` from it,
//! finds no server error and no answer that breaks the document.

mod support;

use serde_json::Value;
use support::pipeline::Dev;

/// Every route of the ingress router, as the document names it.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/chat/completions"),
    ("post", "/v1/requests"),
    ("get", "/v1/requests/{id}"),
    ("post", "/v1/requests:batch"),
    ("get", "/v1/models"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/status"),
    ("get", "/status.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_covers_every_route_and_survives_fuzzing() {
    // Admission's 503s are right under a fuzzer's backlog, and tested on their own
    // (tests/admission.rs); here every 5xx would be a defect.
    let dev = Dev::start(&[("SLUICE__INGRESS__ADMISSION", "false")]).await;
    let base = dev.url.clone();

    let document: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    for (method, path) in ROUTES {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is missing from the document"
        );
    }
    let documented: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "no route documented that does not exist"
    );

    let python = support::python();
    let validated = tokio::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; \
             validate(json.load(sys.stdin)); print('valid')",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running openapi-spec-validator");
    let output = {
        use tokio::io::AsyncWriteExt as _;
        let mut child = validated;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(document.to_string().as_bytes())
            .await
            .unwrap();
        drop(stdin);
        child.wait_with_output().await.unwrap()
    };
    assert!(
        output.status.success(),
        "openapi-spec-validator: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let st = std::path::Path::new(&python).with_file_name("st");
    let fuzz = tokio::process::Command::new(&st)
        .args([
            "run",
            &format!("{base}/openapi.json"),
            "--max-examples",
            &examples,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
            "--request-timeout",
            "30",
            "--seed",
            "20261129",
        ])
        .env("NO_COLOR", "1")
        // schemathesis keeps a cache in its working directory: not in the repository.
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", st.display()));
    let report = String::from_utf8_lossy(&fuzz.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("===") || l.contains("Failures"))
        .collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    assert!(
        fuzz.status.success(),
        "schemathesis found problems:\n{report}\n{}\n--- sluice dev ---\n{}",
        String::from_utf8_lossy(&fuzz.stderr),
        dev.process.logs()
    );
}
