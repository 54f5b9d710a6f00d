//! The model simulator answers like the Messages API: scripted steps in order, streaming and not.

use serde_json::{Value, json};
use sim::model::{Failure, Match, ModelSim, Script, Step, ToolCall};

async fn start(sim: &ModelSim) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    sim.serve(l);
    url
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn request(text: &str, stream: bool) -> Value {
    json!({"model": "claude-sonnet-x", "max_tokens": 100, "stream": stream,
           "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]})
}

#[tokio::test]
async fn scripted_steps_answer_in_order_then_a_closing_text() {
    let sim = ModelSim::new(Some("sk-real".into()));
    sim.add_script(Script {
        selector: "TASK-7".into(),
        steps: vec![
            Step {
                tools: vec![ToolCall::write("/workspace/a.txt", "hello\n")],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "written".into(),
                ..Step::default()
            },
        ],
    });
    let url = start(&sim).await;
    let c = client();
    let bad = c
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", "nope")
        .json(&request("TASK-7", false))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let r: Value = c
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", "sk-real")
        .json(&request("do TASK-7", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["stop_reason"], "tool_use");
    assert_eq!(r["content"][0]["name"], "Write");
    assert_eq!(r["content"][0]["input"]["content"], "hello\n");
    assert!(r["usage"]["input_tokens"].as_u64().unwrap() > 0);
    // The tool result comes back: the second step answers, streamed.
    let follow = json!({"model": "claude-sonnet-x", "max_tokens": 100, "stream": true, "messages": [
        {"role": "user", "content": "do TASK-7"},
        {"role": "assistant", "content": r["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": r["content"][0]["id"], "content": "ok"}]}]});
    let sse = c
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", "sk-real")
        .json(&follow)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let text = sse.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    assert!(events.contains(&"message_delta"));
    let streamed: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, "written");
    // Nothing left in the script: a closing text.
    let r: Value = c
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", "sk-real")
        .json(&request("TASK-7 again", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["content"][0]["text"], "Done.");
    assert_eq!(sim.received().len(), 3, "refused requests are not recorded");
}

#[tokio::test]
async fn failures_can_be_queued_and_count_tokens_answers() {
    let sim = ModelSim::new(None);
    let url = start(&sim).await;
    let c = client();
    sim.fail_next(Failure::RateLimit, 1);
    let r = c
        .post(format!("{url}/v1/messages"))
        .json(&request("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let r = c
        .post(format!("{url}/v1/messages"))
        .json(&request("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: Value = c
        .post(format!("{url}/v1/messages/count_tokens"))
        .json(&request("hello world", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(n["input_tokens"].as_u64().unwrap() > 0);
    let bad = c
        .post(format!("{url}/v1/messages"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// With a fallback agent set, an agent conversation no script selects gets a note quoting the
/// issue (named after its title, saying a scripted model wrote it), then a closing text; a
/// request without the Write tool (not an agent's turn) gets the plain closing text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_agent_takes_any_issue() {
    let sim = ModelSim::new(None);
    sim.add_script(Script::says("Classify this issue", &["{}"]));
    sim.set_fallback_agent("You are working non-interactively");
    let url = start(&sim).await;
    let prompt = "# Rules\nYou are working non-interactively in a git checkout.\n# Task\n<untrusted source=\"issue title\">\nSay Hello, World!\n</untrusted>\n<untrusted source=\"issue\">\nline one\nline two\n</untrusted>\n";
    let ask = |messages: Value, tools: Value| {
        client()
            .post(format!("{url}/v1/messages"))
            .header("x-api-key", "k")
            .json(&json!({"model": "m", "max_tokens": 100, "messages": messages, "tools": tools}))
            .send()
    };
    let write = json!([{"name": "Write", "input_schema": {}}]);
    let v: Value = ask(json!([{"role": "user", "content": prompt}]), write.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(call["name"], "Write");
    assert_eq!(
        call["input"]["file_path"],
        "/workspace/notes/say-hello-world.md"
    );
    let content = call["input"]["content"].as_str().unwrap();
    assert!(content.starts_with("# Say Hello, World!\n"), "{content}");
    assert!(
        content.contains("A scripted model wrote this note"),
        "{content}"
    );
    assert!(content.contains("> line one\n> line two\n"), "{content}");
    let after = json!([
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "ok"}]}
    ]);
    let v: Value = ask(after, write).await.unwrap().json().await.unwrap();
    assert!(
        v["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("scripted model"),
        "{v}"
    );
    let v: Value = ask(json!([{"role": "user", "content": prompt}]), json!([]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["content"][0]["text"], "Done.", "{v}");
}
