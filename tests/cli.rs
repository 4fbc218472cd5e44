//! The `pluresdb` binary end to end: every data command against a
//! temporary database, bad input, import/export, sync through a relay,
//! every HTTP API endpoint of `pluresdb serve` (with bad input), and the
//! hostile clients of issue #21 (missing token, foreign Host and Origin,
//! non-loopback exposure, half-sent requests, slow event subscribers,
//! huge pages and numbers), each followed by a check that the server still
//! answers.
#![cfg(not(target_arch = "wasm32"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_pluresdb");

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("cli.db")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.arg("--db").arg(self.db()).args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "pluresdb {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn data_commands_work_end_to_end() {
    let cli = Cli::new();
    assert!(cli.ok(&["init"]).contains("records: 0"));
    cli.ok(&["put", "user:1", r#"{"name": "Ann", "age": 31}"#]);
    let file = cli.dir.path().join("bob.json");
    std::fs::write(&file, r#"{"name": "Bob", "age": 17}"#).unwrap();
    cli.ok(&["put", "user:2", &format!("@{}", file.display())]);
    let output = cli.with_stdin(&["put", "user:3", "-"], r#"{"name": "Cid", "age": 45}"#);
    assert!(output.status.success(), "{}", stderr(&output));

    let got: Value = serde_json::from_str(&cli.ok(&["get", "user:1"])).unwrap();
    assert_eq!(got, json!({"name": "Ann", "age": 31}));

    let listed: Value =
        serde_json::from_str(&cli.ok(&["list", "--prefix", "user:", "--limit", "2"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let table = cli.ok(&["list", "--format", "table"]);
    assert!(
        table.contains("user:3") && table.contains("(3 records)"),
        "{table}"
    );

    let adults: Value = serde_json::from_str(&cli.ok(&[
        "query",
        r#"{"where": {"age": {"$gte": 18}}, "sort": "-age"}"#,
    ]))
    .unwrap();
    let ids: Vec<&str> = adults
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["user:3", "user:1"]);

    cli.ok(&["delete", "user:2"]);
    let missing = cli.run(&["get", "user:2"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(stderr(&missing).contains("no record `user:2`"));
    assert_eq!(cli.run(&["delete", "user:2"]).status.code(), Some(3));

    let status: Value = serde_json::from_str(&cli.ok(&["status"])).unwrap();
    assert_eq!(status["records"], 2);
    assert_eq!(status["tombstones"], 1);
    assert_eq!(status["actors"], 1);
    assert!(status["sizeOnDisk"].as_u64().unwrap() > 0);
    assert!(status["versionVector"].is_object());
}

#[test]
fn bad_input_is_a_clear_error() {
    let cli = Cli::new();
    let cases: [(&[&str], &str); 6] = [
        (&["put", "x", "{not json"], "not valid JSON"),
        (&["put", "", "1"], "invalid record id"),
        (&["put", "x", "@/no/such/file"], "cannot read"),
        (
            &["query", r#"{"where": {"a": {"$near": 1}}}"#],
            "unknown operator",
        ),
        (&["search", "[1, 2]", "--k", "0"], "k must be at least 1"),
        (&["search", "some text"], "embedder"),
    ];
    for (args, expected) in cases {
        let output = cli.run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let usage = cli.run(&["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
    // A blind relay's key must be 64 hex digits, and is for Hyperswarm only.
    let key = "ab".repeat(32);
    let usages: [(&[&str], &str); 3] = [
        (
            &["sync", "--hyperswarm", "--relay-through", "abc"],
            "64 hex digits",
        ),
        (
            &[
                "sync",
                "--relay",
                "ws://127.0.0.1:1/relay",
                "--relay-through",
                &key,
            ],
            "cannot be used with",
        ),
        (
            &["blind-relay", "--key-file", "/no/such/dir/relay.key"],
            "cannot write the key file",
        ),
    ];
    let garbage = cli.dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let garbage = cli.run(&["blind-relay", "--key-file", garbage.to_str().unwrap()]);
    assert!(
        stderr(&garbage).contains("not a relay key file"),
        "{}",
        stderr(&garbage)
    );
    for (args, expected) in usages {
        let output = cli.run(args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn search_by_vector_and_by_text_with_the_hash_embedder() {
    let cli = Cli::new();
    cli.ok(&["put", "a", "1", "--vector", "[1, 0, 0]"]);
    cli.ok(&["put", "b", "2", "--vector", "[0, 1, 0]"]);
    let hits: Vec<Value> = cli
        .ok(&["search", "[0.9, 0.1, 0]", "--k", "1"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["id"], "a");
    let mismatch = cli.run(&["search", "[1, 0]"]);
    assert!(stderr(&mismatch).contains("dimensions"));

    let notes = Cli::new();
    for (id, text) in [
        ("n1", "buy oat milk and bread"),
        ("n2", "quarterly tax report"),
    ] {
        notes.ok(&[
            "--embedder",
            "hash",
            "put",
            id,
            &json!({ "text": text }).to_string(),
        ]);
    }
    let hits = notes.ok(&["--embedder", "hash", "search", "bread and milk", "--k", "1"]);
    assert!(hits.contains("\"n1\""), "{hits}");
}

#[test]
fn the_built_in_models_find_meaning_from_the_command_line() {
    for model in ["minilm-static", "minilm"] {
        let notes = Cli::new();
        for (id, text) in [
            ("kids", "Pick up the kids from football practice at 5"),
            ("lisbon", "Book flights to Lisbon for the conference"),
            ("anna", "Buy a birthday present for Anna"),
        ] {
            notes.ok(&[
                "--embedder",
                model,
                "put",
                id,
                &json!({ "text": text }).to_string(),
            ]);
        }
        let search = |query: &str| -> String {
            let hits = notes.ok(&["--embedder", model, "search", query, "--k", "1"]);
            let hit: Value = serde_json::from_str(hits.lines().next().unwrap()).unwrap();
            hit["id"].as_str().unwrap().to_string()
        };
        // No word in common with the note it finds.
        assert_eq!(search("travel plans"), "lisbon", "{model}");
        assert_eq!(search("gift ideas"), "anna", "{model}");
        // The database remembers its model and refuses the other.
        let other = if model == "minilm" {
            "minilm-static"
        } else {
            "minilm"
        };
        let refused = notes.run(&["--embedder", other, "search", "travel plans"]);
        assert!(!refused.status.success(), "{model} then {other}");
    }
    let notes = Cli::new();
    let unknown = notes.run(&["--embedder", "gpt-9", "search", "x"]);
    assert!(
        stderr(&unknown).contains("`minilm`") && stderr(&unknown).contains("minilm-static"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn import_is_idempotent_and_export_round_trips() {
    let cli = Cli::new();
    let input = cli.dir.path().join("in.jsonl");
    let mut lines = String::new();
    for i in 0..2500 {
        lines.push_str(&json!({ "id": format!("r{i:04}"), "data": { "i": i } }).to_string());
        lines.push('\n');
    }
    std::fs::write(&input, &lines).unwrap();
    let first = cli.run(&["import", input.to_str().unwrap()]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("2500 records read, 2500 written, 0 already present"),
        "{}",
        stderr(&first)
    );
    // Running it again (say, after an interruption) writes nothing new.
    let second = cli.run(&["import", input.to_str().unwrap()]);
    assert!(
        stderr(&second).contains("2500 records read, 0 written, 2500 already present"),
        "{}",
        stderr(&second)
    );

    let output = cli.dir.path().join("out.jsonl");
    cli.ok(&["export", output.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), lines);

    let broken = cli.dir.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"id\": \"a\", \"data\": 1}\nnot json\n").unwrap();
    let failed = cli.run(&["import", broken.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(stderr(&failed).contains("line 2"), "{}", stderr(&failed));
}

/// A spawned server, killed on drop.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(cli: &Cli, extra: &[&str]) -> Server {
    spawn_server(cli, extra, None)
}

/// Starts `pluresdb serve` on a free loopback port, under a soft limit of
/// `open_files` descriptors when given (as `ulimit -n` in a shell).
fn spawn_server(cli: &Cli, extra: &[&str], open_files: Option<u32>) -> Server {
    let pkg = cli.dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let mut args = vec![
        "serve".to_string(),
        "--port".into(),
        "0".into(),
        "--www".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/www").into(),
        "--pkg".into(),
        pkg.display().to_string(),
        "--relay-backlog".into(),
        cli.dir.path().join("relay.db").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut command = match open_files {
        None => Command::new(BIN),
        Some(limit) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                .arg(BIN);
            shell
        }
    };
    let mut child = command
        .arg("--db")
        .arg(cli.db())
        .args(&args)
        .env_remove("PLURESDB_TOKEN")
        .env_remove("PLURESDB_HOST")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, address }
}

/// A minimal HTTP/1.1 client: one request per connection.
fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = http_full(address, method, path, headers, body);
    (status, body)
}

/// The request line and headers (`Host: <address>` unless `headers` has a
/// `Host`), without the blank line that ends them.
fn request_head(address: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request
}

/// [`http`], with the response's header block (lower-case names).
fn http_full(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = request_head(address, method, path, headers);
    request.push_str(&format!(
        "Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path}: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn every_http_endpoint_including_bad_input() {
    let cli = Cli::new();
    let server = serve(&cli, &["--token", "s3cret", "--max-body", "4096"]);
    let a = server.address.as_str();
    let auth = [("Authorization", "Bearer s3cret")];

    assert_eq!(
        json_of(&http(a, "GET", "/health", &[], b"").1)["status"],
        "ok"
    );

    // Writes need the token.
    let (code, body) = http(
        a,
        "PUT",
        "/api/records/u1",
        &[],
        br#"{"name":"Ann","age":31}"#,
    );
    assert_eq!(code, 401);
    assert_eq!(json_of(&body)["error"]["code"], "UnauthorizedError");
    let (code, _) = http(
        a,
        "PUT",
        "/api/records/u1",
        &[("Authorization", "Bearer nope")],
        b"1",
    );
    assert_eq!(code, 401);
    for (id, value) in [
        ("u1", r#"{"name":"Ann","age":31}"#),
        ("u2", r#"{"name":"Bob","age":17}"#),
    ] {
        let (code, body) = http(
            a,
            "PUT",
            &format!("/api/records/{id}"),
            &auth,
            value.as_bytes(),
        );
        assert_eq!(code, 200, "{body}");
    }
    // Malformed JSON, oversized body, unknown id.
    let (code, body) = http(a, "PUT", "/api/records/bad", &auth, b"{oops");
    assert_eq!(code, 400);
    assert_eq!(json_of(&body)["error"]["code"], "InvalidInputError");
    let big = vec![b'1'; 10_000];
    let (code, body) = http(a, "PUT", "/api/records/big", &auth, &big);
    assert_eq!(code, 413, "{body}");
    assert_eq!(json_of(&body)["error"]["code"], "TooLargeError");
    let (code, body) = http(a, "GET", "/api/records/nobody", &auth, b"");
    assert_eq!(code, 404);
    assert_eq!(json_of(&body)["error"]["code"], "NotFoundError");

    let record = json_of(&http(a, "GET", "/api/records/u1", &auth, b"").1);
    assert_eq!(
        record,
        json!({ "id": "u1", "data": { "name": "Ann", "age": 31 } })
    );
    let page = json_of(&http(a, "GET", "/api/records?prefix=u&limit=1", &auth, b"").1);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["nextCursor"], "u1");
    let (code, _) = http(a, "GET", "/api/records?limit=minus", &auth, b"");
    assert_eq!(code, 400);

    let hits = json_of(
        &http(
            a,
            "POST",
            "/api/query",
            &auth,
            br#"{"where":{"age":{"$gte":18}}}"#,
        )
        .1,
    );
    assert_eq!(hits.as_array().unwrap().len(), 1);
    let (code, body) = http(
        a,
        "POST",
        "/api/query",
        &auth,
        br#"{"where":{"age":{"$near":1}}}"#,
    );
    assert_eq!(code, 400, "{body}");

    let (code, body) = http(a, "POST", "/api/search", &auth, br#"{"vector":[1,0]}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body), json!([]), "no vectors yet");
    let (code, body) = http(
        a,
        "POST",
        "/api/search",
        &auth,
        br#"{"text":"x","vector":[1]}"#,
    );
    assert_eq!(code, 400, "{body}");
    let (code, _) = http(
        a,
        "POST",
        "/api/search",
        &auth,
        br#"{"text":"needs an embedder"}"#,
    );
    assert_eq!(code, 400);

    let status = json_of(&http(a, "GET", "/api/status", &auth, b"").1);
    assert_eq!(status["records"], 2);

    // Server-sent events: a write shows up on the stream.
    let mut events = std::net::TcpStream::connect(a).unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    events
        .write_all(
            format!(
                "GET /api/events HTTP/1.1\r\nHost: {a}\r\nAuthorization: Bearer s3cret\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (code, _) = http(a, "DELETE", "/api/records/u2", &auth, b"");
    assert_eq!(code, 204);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains("\"id\":\"u2\"") {
        let n = events.read(&mut buffer).unwrap();
        assert!(n > 0, "the event stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(seen.contains("event: delete"), "{seen}");
    let (code, _) = http(a, "DELETE", "/api/records/u2", &auth, b"");
    assert_eq!(code, 404);

    // The OpenAPI document is served and lists every endpoint exercised here.
    let (code, body) = http(a, "GET", "/api/openapi.json", &[], b"");
    assert_eq!(code, 200);
    let spec = json_of(&body);
    assert_eq!(spec["openapi"], "3.0.3");
    for path in [
        "/health",
        "/api/records",
        "/api/records/{id}",
        "/api/query",
        "/api/search",
        "/api/status",
        "/api/events",
        "/api/openapi.json",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} is not documented"
        );
    }
    for method in ["get", "put", "delete"] {
        assert!(spec["paths"]["/api/records/{id}"].get(method).is_some());
    }
    // Every guarded route documents the token (401) and Host/Origin (403)
    // refusals.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = &operation["responses"];
            assert!(responses.get("403").is_some(), "{method} {path}: no 403");
            if path.starts_with("/api/") && path != "/api/openapi.json" {
                assert!(responses.get("401").is_some(), "{method} {path}: no 401");
            }
        }
    }
}

/// Issue #20, bug 1, reproduced from the outside as the issue did: a CLI
/// `put` next to a running `serve` on the same file, then two writes
/// through the server. The server's second commit is no longer stale and
/// used to overwrite the CLI's acknowledged write and the stored version
/// vector (`status` showed one actor and no conflict).
#[test]
fn a_cli_write_next_to_a_running_server_is_never_lost() {
    let cli = Cli::new();
    let server = serve(&cli, &[]);
    let a = server.address.as_str();
    cli.ok(&["put", "k", r#"{"from":"cli"}"#]);
    for id in ["x", "k"] {
        let (code, body) = http(
            a,
            "PUT",
            &format!("/api/records/{id}"),
            &[],
            br#"{"from":"server"}"#,
        );
        assert!(code < 300, "PUT {id}: {code} {body}");
    }
    drop(server);
    let status = json_of(&cli.ok(&["status"]));
    assert_eq!(
        status["actors"], 2,
        "the CLI's write is still known under its own actor: {status}"
    );
    // The server's write to `k` came after it had read the CLI's (a causal
    // overwrite); the CLI's own write survives in its history, so a second
    // CLI write under the same slot continues its sequence.
    assert_eq!(json_of(&cli.ok(&["get", "k"])), json!({"from": "server"}));
    assert_eq!(json_of(&cli.ok(&["get", "x"])), json!({"from": "server"}));
    cli.ok(&["put", "k", r#"{"from":"cli again"}"#]);
    assert_eq!(
        json_of(&cli.ok(&["get", "k"])),
        json!({"from": "cli again"})
    );
    let status = json_of(&cli.ok(&["status"]));
    assert_eq!(status["conflicts"], 0, "{status}");
}

/// Issue #21: `POST /api/search` with `k = 10^15` (no token needed)
/// allocated for that many results and aborted the server. Now every
/// search breadth is capped and a larger one is a 400.
#[test]
fn huge_search_numbers_are_refused_and_the_server_stays_up() {
    let cli = Cli::new();
    cli.ok(&["put", "v1", r#"{"t":1}"#, "--vector", "[1,0,0]"]);
    cli.ok(&["put", "v2", r#"{"t":2}"#, "--vector", "[0,1,0]"]);
    let server = serve(&cli, &[]);
    let a = server.address.as_str();
    for body in [
        r#"{"vector":[1,0,0],"k":1000000000000000}"#.to_string(),
        format!(r#"{{"vector":[1,0,0],"k":{}}}"#, u64::MAX),
        r#"{"vector":[1,0,0],"k":1000000000000000,"filter":{"where":{"t":1}}}"#.to_string(),
        r#"{"vector":[1,0,0],"k":10001}"#.to_string(),
    ] {
        let (code, response) = http(a, "POST", "/api/search", &[], body.as_bytes());
        assert_eq!(code, 400, "{body}: {response}");
        assert!(response.contains("at most 10000"), "{response}");
    }
    let (code, response) = http(
        a,
        "POST",
        "/api/search",
        &[],
        br#"{"vector":[1,0,0],"k":10000,"filter":{"where":{"t":2}}}"#,
    );
    assert_eq!(code, 200, "{response}");
    assert_eq!(json_of(&response)[0]["id"], "v2");
    let (code, _) = http(a, "GET", "/health", &[], b"");
    assert_eq!(code, 200, "the server is still up");
}

#[test]
fn two_databases_sync_through_the_cli_and_a_relay() {
    let relay_cli = Cli::new();
    let server = serve(&relay_cli, &[]);
    let relay = format!("ws://{}/relay", server.address);
    let a = Cli::new();
    let b = Cli::new();
    a.ok(&["put", "from-a", r#"{"hello": "b"}"#]);
    let invite = a.ok(&["invite"]).trim().to_string();
    assert!(invite.starts_with("pluresdb1."));
    a.ok(&["sync", "--relay", &relay, "--once", "0"]);
    b.ok(&[
        "sync", "--relay", &relay, "--invite", &invite, "--once", "1",
    ]);
    let got: Value = serde_json::from_str(&b.ok(&["get", "from-a"])).unwrap();
    assert_eq!(got, json!({"hello": "b"}));
}

// ---- Issue #21: hostile clients over HTTP -------------------------------

/// `/health` answers 200 (a fresh connection, short timeouts; `None` when
/// the connection is refused, closed or silent).
fn health(address: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(
            format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    std::str::from_utf8(response.get(9..12)?).ok()?.parse().ok()
}

fn assert_up(address: &str) {
    assert_eq!(health(address), Some(200), "the server still answers");
}

/// Sends a request and returns the stream after reading the status line
/// and headers (lower case), for responses that do not end (event streams,
/// WebSocket upgrades).
fn open_stream(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, std::net::TcpStream) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = request_head(address, "GET", path, headers);
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no response to GET {path}: {head:?}"));
    (status, head, stream)
}

const WEBSOCKET: [(&str, &str); 4] = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// The status of a WebSocket upgrade of `/relay` with `extra` headers.
fn relay_upgrade(address: &str, extra: &[(&str, &str)]) -> u16 {
    let mut headers = WEBSOCKET.to_vec();
    headers.extend_from_slice(extra);
    open_stream(address, "/relay", &headers).0
}

#[test]
fn the_token_guards_every_api_route_but_health_openapi_and_the_app() {
    let cli = Cli::new();
    cli.ok(&["put", "r1", r#"{"n":1}"#, "--vector", "[1,0]"]);
    let server = serve(&cli, &["--token", "s3cret"]);
    let a = server.address.as_str();
    let auth = ("Authorization", "Bearer s3cret");
    let reads: [(&str, &str, &[u8]); 6] = [
        ("GET", "/api/records", b""),
        ("GET", "/api/records/r1", b""),
        ("POST", "/api/query", br#"{"where":{"n":1}}"#),
        ("POST", "/api/search", br#"{"vector":[1,0]}"#),
        ("GET", "/api/status", b""),
        ("PUT", "/api/records/r2", b"2"),
    ];
    for (method, path, body) in reads {
        for headers in [
            &[][..],
            &[("Authorization", "Bearer wrong")][..],
            &[("Authorization", "Bearer s3cret-and-more")][..],
        ] {
            let (code, head, response) = http_full(a, method, path, headers, body);
            assert_eq!(code, 401, "{method} {path} {headers:?}: {response}");
            assert_eq!(json_of(&response)["error"]["code"], "UnauthorizedError");
            assert!(head.contains("www-authenticate: bearer"), "{head}");
        }
        let (code, _, response) = http_full(a, method, path, &[auth], body);
        assert!(
            code < 300,
            "{method} {path} with the token: {code} {response}"
        );
    }
    // `?token=` is for event streams only.
    let (code, _) = http(a, "GET", "/api/records?token=s3cret", &[], b"");
    assert_eq!(code, 401);
    let (code, _, _) = open_stream(a, "/api/events", &[]);
    assert_eq!(code, 401);
    let (code, _, _) = open_stream(a, "/api/events?token=wrong", &[]);
    assert_eq!(code, 401);
    let (code, head, _) = open_stream(a, "/api/events", &[auth]);
    assert_eq!(code, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let (code, head, mut events) = open_stream(a, "/api/events?token=s3cret", &[]);
    assert_eq!(code, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let (code, _) = http(a, "PUT", "/api/records/seen", &[auth], b"1");
    assert_eq!(code, 200);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains("\"id\":\"seen\"") {
        let n = events.read(&mut buffer).unwrap();
        assert!(n > 0, "the event stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    // Open without a token: health, the API description, the app.
    for path in ["/health", "/api/openapi.json", "/"] {
        let (code, _) = http(a, "GET", path, &[], b"");
        assert_eq!(code, 200, "{path}");
    }
    assert_up(a);
}

#[test]
fn foreign_hosts_and_origins_are_forbidden_everywhere() {
    let cli = Cli::new();
    let server = serve(
        &cli,
        &[
            "--allow-host",
            "db.test",
            "--allow-origin",
            "https://app.example",
        ],
    );
    let a = server.address.as_str();
    let port = a.rsplit(':').next().unwrap();
    // DNS rebinding: the page's own name arrives as the Host.
    for path in [
        "/health",
        "/api/status",
        "/",
        "/app.js",
        "/api/openapi.json",
    ] {
        for host in [
            "evil.example".to_string(),
            format!("evil.example:{port}"),
            format!("localhost.evil.example:{port}"),
        ] {
            let (code, body) = http(a, "GET", path, &[("Host", &host)], b"");
            assert_eq!(code, 403, "{path} with Host {host}: {body}");
            assert_eq!(json_of(&body)["error"]["code"], "ForbiddenError");
        }
    }
    let (code, body) = http(
        a,
        "GET",
        "/api/status",
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--allow-origin"), "{body}");
    let (code, _) = http(a, "GET", "/api/status", &[("Origin", "null")], b"");
    assert_eq!(code, 403);
    let (code, _) = http(
        a,
        "PUT",
        "/api/records/x",
        &[("Origin", "http://evil.example")],
        b"1",
    );
    assert_eq!(code, 403);
    // The relay's WebSocket upgrade too.
    assert_eq!(relay_upgrade(a, &[("Origin", "http://evil.example")]), 403);
    assert_eq!(relay_upgrade(a, &[("Host", "evil.example")]), 403);
    assert_eq!(
        relay_upgrade(a, &[("Origin", "http://localhost:5173")]),
        101
    );
    assert_eq!(relay_upgrade(a, &[("Origin", "https://app.example")]), 101);
    assert_eq!(relay_upgrade(a, &[]), 101, "native clients send no Origin");
    // Allowed: the defaults, --allow-host, pages on those hosts, --allow-origin.
    for headers in [
        vec![("Host", format!("localhost:{port}"))],
        vec![("Host", format!("[::1]:{port}"))],
        vec![("Host", "DB.test".to_string())],
        vec![("Origin", format!("http://127.0.0.1:{port}"))],
        vec![("Origin", "http://db.test:8080".to_string())],
        vec![("Origin", "https://app.example".to_string())],
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (code, body) = http(a, "GET", "/api/status", &headers, b"");
        assert_eq!(code, 200, "{headers:?}: {body}");
    }
    let (code, _) = http(
        a,
        "GET",
        "/api/status",
        &[("Origin", "https://app.example:444")],
        b"",
    );
    assert_eq!(code, 403, "another port is another origin");
    assert_up(a);
}

#[test]
fn a_non_loopback_address_needs_a_token() {
    let cli = Cli::new();
    let www = concat!(env!("CARGO_MANIFEST_DIR"), "/www");
    for (args, expected) in [
        (
            vec!["serve", "--host", "0.0.0.0", "--port", "0"],
            "refusing to serve on 0.0.0.0 without a token",
        ),
        (
            vec!["serve", "--host", "::", "--port", "0"],
            "refusing to serve on :: without a token",
        ),
        (
            vec!["serve", "--host", "0.0.0.0", "--port", "0", "--token", ""],
            "--token (or PLURESDB_TOKEN) is empty",
        ),
    ] {
        let started = std::time::Instant::now();
        let output = cli
            .command(&args)
            .args(["--www", www])
            .env_remove("PLURESDB_TOKEN")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = stderr(&output);
        assert!(message.contains(expected), "{args:?}: {message}");
        assert!(started.elapsed() < Duration::from_secs(5));
        if !args.contains(&"--token") {
            assert!(message.contains("--insecure-no-token"), "{message}");
        }
    }
    assert!(!cli.db().exists(), "refused before opening anything");
}

/// The soft limit on open files of this process.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

/// The attacker's report: 1,100 half-sent requests on a server limited to
/// 1,024 descriptors made `/health` and the relay stop answering. The
/// server runs here under `ulimit -n 1024` with the default cap (900
/// connections) and a 3 s header timeout.
#[test]
fn half_sent_requests_do_not_starve_health_or_the_relay() {
    let cli = Cli::new();
    let server = spawn_server(&cli, &["--header-timeout-ms", "3000"], Some(1024));
    let a = server.address.as_str();
    let limit = open_files_limit();
    let count = 1_100.min(limit.saturating_sub(100) as usize);
    if count < 1_100 {
        eprintln!("ulimit -n is {limit}: opening {count} half-sent requests instead of 1,100");
    }
    let descriptors =
        || std::fs::read_dir(format!("/proc/{}/fd", server.child.id())).map_or(0, |d| d.count());
    let started = std::time::Instant::now();
    let mut sockets = Vec::new();
    let mut most_descriptors = descriptors();
    for i in 0..count {
        let mut socket = std::net::TcpStream::connect(a).unwrap();
        let _ = socket.write_all(b"GET / HTTP/1.1\r\n");
        sockets.push(socket);
        if i % 50 == 0 {
            most_descriptors = most_descriptors.max(descriptors());
        }
    }
    let opened = started.elapsed();
    most_descriptors = most_descriptors.max(descriptors());
    assert!(
        most_descriptors < 1_000,
        "the server held {most_descriptors} descriptors (cap 900 connections)"
    );
    let probing = std::time::Instant::now();
    loop {
        if health(a) == Some(200) && relay_upgrade(a, &[]) == 101 {
            break;
        }
        assert!(
            probing.elapsed() < Duration::from_secs(6),
            "/health or /relay did not answer within 6 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answered = probing.elapsed();
    // Every half-sent request is closed: over the cap at once, the others
    // after the header timeout.
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(answered));
    let mut still_open = 0;
    for socket in &mut sockets {
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buffer = [0u8; 256];
        loop {
            match socket.read(&mut buffer) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {
                    still_open += 1;
                    break;
                }
            }
        }
    }
    eprintln!(
        "{count} half-sent requests opened in {opened:?} (server: at most {most_descriptors} descriptors open); /health and /relay answered {answered:?} later; {still_open} still open 3.5 s after"
    );
    assert_eq!(still_open, 0, "half-sent requests the server kept open");
    // An idle keep-alive connection is closed after the same timeout.
    let mut idle = std::net::TcpStream::connect(a).unwrap();
    idle.write_all(format!("GET /health HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut response = Vec::new();
    let waited = std::time::Instant::now();
    let _ = idle.read_to_end(&mut response);
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
    assert!(
        waited.elapsed() < Duration::from_secs(5),
        "idle connection closed after {:?}",
        waited.elapsed()
    );
    eprintln!(
        "an idle keep-alive connection was closed after {:?}",
        waited.elapsed()
    );
    assert_up(a);
}

/// A request whose body never finishes gets a 408 once the request time
/// limit passes.
#[test]
fn a_request_that_never_finishes_times_out() {
    let cli = Cli::new();
    let server = serve(&cli, &["--request-timeout-ms", "300"]);
    let a = server.address.as_str();
    let mut stream = std::net::TcpStream::connect(a).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            format!(
                "PUT /api/records/slow HTTP/1.1\r\nHost: {a}\r\nContent-Length: 100\r\n\r\n{{\"a\""
            )
            .as_bytes(),
        )
        .unwrap();
    let started = std::time::Instant::now();
    let mut response = vec![0u8; 4096];
    let n = stream.read(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response[..n]).into_owned();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("TimeoutError"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_up(a);
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// A keep-alive HTTP/1.1 connection for many small requests.
struct KeepAlive {
    reader: BufReader<std::net::TcpStream>,
    address: String,
}

impl KeepAlive {
    fn new(address: &str) -> Self {
        let stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
            address: address.to_string(),
        }
    }

    fn put(&mut self, id: &str, body: &str, token: &str) -> u16 {
        let request = format!(
            "PUT /api/records/{id} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line[9..12].parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        status
    }
}

/// An `/api/events` subscriber that never reads while 50,000 records are
/// written: the server drops it once it is 1,024 events behind (a final
/// `lagged` event), its memory stays bounded, writers are not held up.
#[test]
fn a_slow_event_subscriber_is_dropped_and_memory_stays_bounded() {
    const WRITES: usize = 50_000;
    const WRITERS: usize = 8;
    let cli = Cli::new();
    let server = serve(&cli, &["--token", "t", "--write-timeout-ms", "600000"]);
    let a = server.address.clone();
    let pid = server.child.id();
    let before = rss_kib(pid);
    let (code, _, mut events) = open_stream(&a, "/api/events?token=t", &[]);
    assert_eq!(code, 200);
    // Long ids: ~300-byte events, about 15 MB in all, far more than the
    // socket buffers hold.
    let padding = "p".repeat(280);
    let started = std::time::Instant::now();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let a = a.clone();
            let padding = padding.clone();
            let peak = peak.clone();
            std::thread::spawn(move || {
                let mut connection = KeepAlive::new(&a);
                connection.reader.get_mut().set_nodelay(true).unwrap();
                for i in (w..WRITES).step_by(WRITERS) {
                    let id = format!("w{i:06}-{padding}");
                    assert_eq!(connection.put(&id, "{}", "t"), 200);
                    if i % 1000 == w {
                        peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let written = started.elapsed();
    let after = rss_kib(pid);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(after);
    assert_up(&a);
    // Now read what the subscriber was sent: some events, then `lagged`.
    let mut seen = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    let reading = std::time::Instant::now();
    loop {
        match events.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("reading the event stream: {e}"),
        }
        if seen.windows(13).any(|w| w == b"event: lagged") {
            break;
        }
        assert!(reading.elapsed() < Duration::from_secs(30));
    }
    let seen = String::from_utf8_lossy(&seen);
    let delivered = seen.matches("event: upsert").count();
    eprintln!(
        "{WRITES} writes in {written:?}; server RSS {} MiB before, peak {} MiB, {} MiB after; the slow subscriber got {delivered} events, then `lagged`",
        before / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(seen.contains("event: lagged"), "no lagged event");
    assert!(delivered < WRITES, "{delivered} events delivered");
    assert!(peak < 300 * 1024, "server RSS peaked at {peak} KiB");
    assert_up(&a);
    let status = json_of(
        &http(
            &a,
            "GET",
            "/api/status",
            &[("Authorization", "Bearer t")],
            b"",
        )
        .1,
    );
    assert_eq!(status["records"], WRITES);
}

#[test]
fn event_streams_are_capped() {
    let cli = Cli::new();
    let server = serve(&cli, &["--max-event-streams", "2"]);
    let a = server.address.as_str();
    let (first, _, first_stream) = open_stream(a, "/api/events", &[]);
    let (second, _, _second_stream) = open_stream(a, "/api/events", &[]);
    assert_eq!((first, second), (200, 200));
    let (code, _, mut third) = open_stream(a, "/api/events", &[]);
    assert_eq!(code, 503);
    let mut body = String::new();
    let _ = third.read_to_string(&mut body);
    assert!(body.contains("UnavailableError"), "{body}");
    // Closing a stream gives its slot back.
    drop(first_stream);
    let started = std::time::Instant::now();
    while open_stream(a, "/api/events", &[]).0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slot was not given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_up(a);
}

#[test]
fn records_and_queries_are_paged_and_numbers_checked() {
    let cli = Cli::new();
    let input = cli.dir.path().join("in.jsonl");
    let mut lines = String::new();
    for i in 0..2_500 {
        lines.push_str(
            &json!({ "id": format!("r{i:04}"), "data": { "i": i, "odd": i % 2 == 1 } }).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&input, &lines).unwrap();
    cli.ok(&["import", input.to_str().unwrap()]);
    cli.ok(&["put", "v", r#"{"i":-1}"#, "--vector", "[1,0]"]);
    let server = serve(&cli, &[]);
    let a = server.address.as_str();

    // GET /api/records: 100 by default, at most 1,000, every record once.
    let page = json_of(&http(a, "GET", "/api/records?prefix=r", &[], b"").1);
    assert_eq!(page["items"].as_array().unwrap().len(), 100);
    assert_eq!(page["nextCursor"], "r0099");
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/api/records?prefix=r&limit=1000".to_string(),
            Some(c) => format!("/api/records?prefix=r&limit=1000&cursor={c}"),
        };
        let page = json_of(&http(a, "GET", &path, &[], b"").1);
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            ids.push(item["id"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..2_500).map(|i| format!("r{i:04}")).collect();
    assert_eq!(ids, expected, "every record exactly once, in order");
    assert_eq!(pages, 3);

    // POST /api/query: offset and X-Next-Offset, over a sorted filter.
    let mut odd = Vec::new();
    let mut offset = Some(0u64);
    while let Some(at) = offset {
        let body = json!({ "where": { "odd": true }, "sort": "-i", "limit": 300, "offset": at });
        let (code, head, response) =
            http_full(a, "POST", "/api/query", &[], body.to_string().as_bytes());
        assert_eq!(code, 200, "{response}");
        for hit in json_of(&response).as_array().unwrap() {
            odd.push(hit["data"]["i"].as_i64().unwrap());
        }
        offset = head
            .lines()
            .find_map(|l| l.strip_prefix("x-next-offset: "))
            .map(|n| n.trim().parse().unwrap());
    }
    let expected: Vec<i64> = (0..2_500).rev().filter(|i| i % 2 == 1).collect();
    assert_eq!(odd, expected, "every match exactly once, in order");
    let (code, head, response) = http_full(a, "POST", "/api/query", &[], b"{}");
    assert_eq!(code, 200);
    assert_eq!(
        json_of(&response).as_array().unwrap().len(),
        100,
        "default page"
    );
    assert!(head.contains("x-next-offset: 100"), "{head}");
    // A `$in` longer than the cap (a scan compares each value with every
    // record) is a 400 that names the cap.
    let values: Vec<u32> = (0..=10_000).collect();
    let long = json!({ "where": { "i": { "$in": values } } });
    let (code, _, response) = http_full(a, "POST", "/api/query", &[], long.to_string().as_bytes());
    assert_eq!(code, 400, "{response}");
    assert!(response.contains("at most 10000"), "{response}");

    // Numbers out of range are a 400, never a crash.
    let too_big = u64::MAX.to_string();
    let overflowing = format!("/api/records?limit={too_big}0");
    let bad: Vec<(&str, &str, String)> = vec![
        ("GET", "/api/records?limit=0", String::new()),
        ("GET", "/api/records?limit=1001", String::new()),
        ("GET", "/api/records?limit=1000000000000000", String::new()),
        ("GET", &overflowing, String::new()),
        ("POST", "/api/query", r#"{"limit":1001}"#.into()),
        ("POST", "/api/query", r#"{"limit":0}"#.into()),
        ("POST", "/api/query", r#"{"limit":-1}"#.into()),
        ("POST", "/api/query", r#"{"limit":1.5}"#.into()),
        ("POST", "/api/query", format!(r#"{{"offset":{too_big}}}"#)),
        ("POST", "/api/query", r#"{"offset":1000000001}"#.into()),
        ("POST", "/api/query", r#"{"offset":"1"}"#.into()),
        ("POST", "/api/search", r#"{"vector":[1,0],"k":0}"#.into()),
        ("POST", "/api/search", r#"{"vector":[1,0],"ef":0}"#.into()),
        (
            "POST",
            "/api/search",
            r#"{"vector":[1,0],"ef":10001}"#.into(),
        ),
        (
            "POST",
            "/api/search",
            format!(r#"{{"vector":[1,0],"ef":{too_big}}}"#),
        ),
        (
            "POST",
            "/api/search",
            r#"{"vector":[1,0],"minScore":1e39}"#.into(),
        ),
        (
            "POST",
            "/api/search",
            r#"{"vector":[1,0],"minScore":"high"}"#.into(),
        ),
        ("POST", "/api/search", r#"{"vector":[1e39,0]}"#.into()),
    ];
    for (method, path, body) in &bad {
        let (code, response) = http(a, method, path, &[], body.as_bytes());
        assert_eq!(code, 400, "{method} {path} {body}: {response}");
        assert_eq!(json_of(&response)["error"]["code"], "InvalidInputError");
    }
    let (code, response) = http(
        a,
        "POST",
        "/api/search",
        &[],
        br#"{"vector":[1,0],"k":1,"ef":10000,"minScore":0.5}"#,
    );
    assert_eq!(code, 200, "{response}");
    assert_eq!(json_of(&response)[0]["id"], "v");
    assert_up(a);
}

/// Ctrl-C (SIGINT) with an event stream open: the server ends the stream,
/// closes the database and exits 0 within the grace period.
#[test]
fn ctrl_c_closes_the_database_cleanly() {
    let cli = Cli::new();
    let mut server = serve(&cli, &[]);
    let a = server.address.clone();
    let (code, _) = http(&a, "PUT", "/api/records/kept", &[], br#"{"ok":true}"#);
    assert_eq!(code, 200);
    let (code, _, mut events) = open_stream(&a, "/api/events", &[]);
    assert_eq!(code, 200);
    let killed = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let mut rest = String::new();
    let _ = events.read_to_string(&mut rest);
    assert_eq!(json_of(&cli.ok(&["get", "kept"])), json!({"ok": true}));
}

/// Fuzzes the HTTP handlers' inputs: 3,000 requests with random paths,
/// query strings, headers and JSON bodies (huge, negative, fractional and
/// non-numeric numbers, deep nesting, wrong types, invalid UTF-8, random
/// vectors) against every API route. Every answer is a JSON error or a
/// success, never a 5xx, and the server stays up. Seeded, so a failure
/// replays.
#[test]
fn random_requests_never_break_the_api() {
    let cli = Cli::new();
    let server = serve(&cli, &[]);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below.max(1)
    };
    let numbers = [
        "0",
        "-1",
        "1",
        "10",
        "1e308",
        "1e39",
        "-1e39",
        "0.5",
        "18446744073709551615",
        "18446744073709551616",
        "9007199254740993",
        "\"7\"",
        "null",
        "true",
        "[]",
        "{}",
        "1000000000000000",
        "NaN",
    ];
    for round in 0..3_000u64 {
        let number = numbers[next(numbers.len() as u64) as usize];
        let nested = format!(
            "{}1{}",
            "[".repeat(next(200) as usize),
            "]".repeat(next(200) as usize)
        );
        let vector: Vec<String> = (0..next(12))
            .map(|_| numbers[next(numbers.len() as u64) as usize].to_string())
            .collect();
        let bodies = [
            format!("{{\"vector\":[{}],\"k\":{number}}}", vector.join(",")),
            format!("{{\"text\":\"hello\",\"k\":{number},\"minScore\":{number},\"ef\":{number}}}"),
            format!("{{\"where\":{{\"n\":{{\"$gt\":{number}}}}},\"limit\":{number},\"offset\":{number}}}"),
            format!("{{\"filter\":{nested}}}"),
            format!("{{\"sort\":{number},\"limit\":{number}}}"),
            nested.clone(),
            "{\"a\":".repeat(next(300) as usize),
            String::from_utf8_lossy(&[0xff, 0xfe, b'{', 0x80]).into_owned(),
            format!("{{\"text\":{number}}}"),
        ];
        let body = &bodies[next(bodies.len() as u64) as usize];
        let query_number: String = number
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let number_in_query = &query_number;
        let paths = [
            format!("/api/records?limit={number_in_query}&cursor={}", next(1000)),
            format!("/api/records?prefix=%ff%fe&limit={}", next(5000)),
            format!("/api/records/r{}", next(20)),
            "/api/query".to_string(),
            format!("/api/query?limit={number_in_query}&offset={number_in_query}"),
            "/api/search".to_string(),
            "/api/status".to_string(),
            format!("/api/records/{}", "%".repeat(next(4) as usize)),
        ];
        let path = &paths[next(paths.len() as u64) as usize];
        let method = ["GET", "POST", "PUT", "DELETE", "PATCH"][next(5) as usize];
        let (status, response) = http(
            &server.address,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert!(
            (200..500).contains(&status),
            "round {round}: {method} {path} with {body:?} answered {status}: {response}"
        );
        if status >= 400 && status != 405 && status != 404 {
            assert!(
                response.contains("\"error\""),
                "round {round}: {method} {path}: {status} without a JSON error: {response}"
            );
        }
    }
    assert_up(&server.address);
}

#[test]
fn index_flags_declare_secondary_indexes() {
    let cli = Cli::new();
    let lines: String = (0..1200)
        .map(|n| {
            format!(
                "{{\"id\": \"n{n:04}\", \"data\": {{\"kind\": \"k{}\", \"n\": {n}}}}}\n",
                n % 12
            )
        })
        .collect();
    let imported = cli.with_stdin(&["import", "-"], &lines);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let query = r#"{"where": {"kind": "k5", "n": {"$lt": 100}}}"#;
    let count = |output: &Output| -> usize {
        assert!(output.status.success(), "{}", stderr(output));
        let hits: Value = serde_json::from_slice(&output.stdout).unwrap();
        hits.as_array().unwrap().len()
    };
    // Without an index the query scans 1,200 records and says so once.
    let scanned = cli.run(&["query", query]);
    assert_eq!(count(&scanned), 8);
    assert!(
        stderr(&scanned).contains("none of these fields is indexed"),
        "{}",
        stderr(&scanned)
    );
    // With either field indexed: the same answer, no warning.
    for field in ["kind", "n"] {
        let indexed = cli.run(&["--index", field, "query", query]);
        assert_eq!(count(&indexed), 8);
        assert!(
            !stderr(&indexed).contains("indexed"),
            "{}",
            stderr(&indexed)
        );
    }
    let twice = cli.run(&["--index", "kind", "--index", "kind", "query", query]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        stderr(&twice).contains("indexed twice"),
        "{}",
        stderr(&twice)
    );
}
