//! Unit tests of the evidence record: the transcript export, signatures, the figures.

use super::*;

fn line(v: Value) -> Vec<u8> {
    format!("{v}\n").into_bytes()
}

#[test]
fn the_stream_json_log_becomes_a_trajectory_with_rounds_tools_and_usage() {
    let chunks = vec![
        (
            1,
            "agent".to_string(),
            line(
                json!({"type": "system", "subtype": "init", "model": "sonnet", "tools": ["Bash"], "session_id": "s"}),
            ),
        ),
        (2, "runner".to_string(), b"not the agent\n".to_vec()),
        (
            3,
            "agent".to_string(),
            line(
                json!({"type": "assistant", "message": {"model": "sonnet", "usage": {"input_tokens": 10, "output_tokens": 5}, "content": [{"type": "text", "text": "I will edit"}, {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]}}),
            ),
        ),
        (
            4,
            "agent".to_string(),
            line(
                json!({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a.txt"}]}]}}),
            ),
        ),
        (5, "agent".to_string(), b"plain text line\n".to_vec()),
        (
            6,
            "agent".to_string(),
            line(json!({"type": "result", "is_error": false, "result": "done", "num_turns": 1})),
        ),
        (
            7,
            "agent".to_string(),
            line(json!({"type": "system", "subtype": "init", "model": "sonnet"})),
        ),
    ];
    let t = trajectory(4, 2, "claude", &chunks);
    let doc: Value = serde_json::from_str(&t.text).unwrap();
    assert_eq!(doc["format"], TRAJECTORY_FORMAT);
    let steps = doc["steps"].as_array().unwrap();
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "init",
            "message",
            "tool_call",
            "tool_result",
            "text",
            "result",
            "init"
        ]
    );
    assert_eq!(steps[1]["usage"]["input_tokens"], 10);
    assert_eq!(steps[2]["tool"], "Bash");
    assert_eq!(steps[3]["text"], "a.txt");
    assert_eq!(steps[6]["round"], 1, "a second init starts a new round");
    assert_eq!((t.turns, t.tokens, t.steps), (1, 15, 7));
    assert_eq!(
        t.sha256,
        hex::encode(sha2::Sha256::digest(t.text.as_bytes()))
    );
}

#[test]
fn a_signature_covers_every_byte_and_the_pem_carries_the_key() {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let signer = Signer {
        key: Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap(),
    };
    let record = br#"{"verify":{"after":{"exit_code":0}}}"#;
    let sig = signer.sign(record);
    assert!(verify(signer.public_key(), record, &sig));
    let mut tampered = record.to_vec();
    let i = tampered.iter().position(|b| *b == b'0').unwrap();
    tampered[i] = b'1';
    assert!(!verify(signer.public_key(), &tampered, &sig));
    let pem = signer.public_pem();
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
        "{pem}"
    );
    assert_eq!(signer.key_id().len(), 64);
}

#[test]
fn the_pr_section_shows_figures_and_no_agent_text() {
    let record = json!({
        "task": 3, "attempt": 1, "base": "aaaaaaaaaaaaaaaa", "head": "bbbbbbbbbbbbbbbb",
        "verify": {"before": {"status": "failed", "exit_code": 1, "duration_ms": 1500}, "after": {"status": "passed", "exit_code": 0, "duration_ms": 900, "output_tail": "<script>hostile</script>"}},
        "tests": {"changed_files": ["t.py"], "changed": [{"path": "t.py", "name": "test_x <b>", "result": "passed"}]},
        "coverage": {"covered": [{"symbol": "a"}], "not_covered": ["b", "c"], "fraction": 0.33},
        "model_calls": {"ledger": [{}], "agent_turns": 2, "total_cost_microusd": 12345, "total_tokens": 99},
        "commands": [{}, {}],
        "trajectory": {"steps": 5, "sha256": "cccccccccccccccc", "url": "/api/tasks/3/attempts/1/trajectory"},
    });
    let s = pr_section(&record);
    for want in [
        "failed (exit 1, 1.5 s)",
        "passed (exit 0, 0.9 s)",
        "1 (1 passed, 0 failed, 0 not shown",
        "1 of 3 symbols",
        "USD 0.0123",
        "backporcher evidence verify 3",
    ] {
        assert!(s.contains(want), "{want} missing in {s}");
    }
    assert!(!s.contains("hostile") && !s.contains("test_x"), "{s}");
}
