//! The `pluresdb` binary end to end: every data command against a
//! temporary database, bad input, import/export, sync through a relay, and
//! every HTTP API endpoint of `pluresdb serve` (with bad input).
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
    let mut child = Command::new(BIN)
        .arg("--db")
        .arg(cli.db())
        .args(&args)
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
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
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
