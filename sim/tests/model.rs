//! The model simulator answers like the Messages API and the Responses API: scripted steps in
//! order, streaming and not.

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

/// A Codex CLI request: its developer message, the user's prompt, and what came since.
fn responses_request(prompt: &str, since: Vec<Value>) -> Value {
    let mut input = vec![
        json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are a coding agent"}]}),
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}),
    ];
    input.extend(since);
    json!({"model": "gpt-5.5", "stream": true, "input": input,
           "tools": [{"type": "function", "name": "exec_command"}, {"type": "custom", "name": "apply_patch"}]})
}

/// The `data:` objects of an event stream.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn the_responses_api_answers_scripts_with_the_codex_clis_tools() {
    let sim = ModelSim::new(Some("sk-real".into()));
    sim.add_script(Script {
        selector: "TASK-9".into(),
        steps: vec![
            Step {
                when: Match {
                    tool_result: Some(false),
                    ..Match::default()
                },
                text: "Writing it.".into(),
                tools: vec![
                    ToolCall::write("/workspace/a.txt", "one\ntwo\n"),
                    ToolCall::bash("cargo test"),
                ],
                ..Step::default()
            },
            Step::after_tools("written"),
        ],
    });
    let url = start(&sim).await;
    let c = client();
    let post = |body: Value, key: &str| {
        c.post(format!("{url}/v1/responses"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let bad = post(responses_request("TASK-9", vec![]), "nope")
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert!(bad.text().await.unwrap().contains("invalid_api_key"));

    let first = post(responses_request("do TASK-9", vec![]), "sk-real")
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    let evs = events(&first.text().await.unwrap());
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    assert!(kinds.contains(&"response.output_text.delta"));
    let done: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .map(|e| &e["item"])
        .collect();
    assert_eq!(done.len(), 3, "the text, the patch and the command");
    assert_eq!(done[0]["type"], "message");
    assert_eq!(done[1]["type"], "custom_tool_call");
    assert_eq!(done[1]["name"], "apply_patch");
    assert_eq!(
        done[1]["input"],
        "*** Begin Patch\n*** Add File: /workspace/a.txt\n+one\n+two\n*** End Patch\n"
    );
    assert_eq!(done[2]["type"], "function_call");
    assert_eq!(done[2]["name"], "exec_command");
    let args: Value = serde_json::from_str(done[2]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["cmd"], "cargo test");
    let usage = &evs.last().unwrap()["response"]["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0);
    assert!(usage["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);

    // The tools' outputs come back: the next step answers.
    let since = vec![
        done[1].clone(),
        json!({"type": "custom_tool_call_output", "call_id": done[1]["call_id"], "output": "Success. Updated the following files:\nA a.txt"}),
        done[2].clone(),
        json!({"type": "function_call_output", "call_id": done[2]["call_id"], "output": "test result: ok"}),
    ];
    let second: Value = c
        .post(format!("{url}/v1/responses"))
        .bearer_auth("sk-real")
        .json(&json!({"model": "gpt-5.5", "stream": false,
                      "input": responses_request("do TASK-9", since)["input"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["status"], "completed");
    assert_eq!(second["output"][0]["content"][0]["text"], "written");
    let got = sim.received();
    assert!(
        got[1].last_user_text.contains("test result: ok"),
        "{}",
        got[1].last_user_text
    );

    // Rate limits for the Responses API only: a Messages call goes through meanwhile.
    sim.fail_next_responses(Failure::RateLimit, 1);
    let m = c
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", "sk-real")
        .json(&request("hello", false))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let limited = post(responses_request("again TASK-9", vec![]), "sk-real")
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(
        limited
            .text()
            .await
            .unwrap()
            .contains("rate_limit_exceeded")
    );
    let after = post(responses_request("again TASK-9", vec![]), "sk-real")
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}
