//! Resolution cases named in the goals: re-exports, module paths that share a last name,
//! methods that share a name across types, and calls that must stay unresolved.

use std::collections::BTreeSet;

use codegraph::{Config, Graph};

use crate::support::{call_pairs, corpus};

fn callees_of(g: &Graph, caller: &str) -> BTreeSet<String> {
    call_pairs(g)
        .into_iter()
        .filter(|(a, _)| a == caller)
        .map(|(_, b)| b)
        .collect()
}

#[test]
fn package_re_export_resolves_to_the_defining_module() {
    let g = Graph::build(&corpus().join("python"), Config::default()).expect("build");
    let callees = callees_of(&g, "client.py::main");
    assert!(
        callees.contains("shop/api.py::get"),
        "shop.get → api.get: {callees:?}"
    );
    assert!(
        !callees.contains("shop/util.py::get"),
        "never the same-named util.get: {callees:?}"
    );
    assert!(
        !callees.contains("client.py::get"),
        "never the local same-named get: {callees:?}"
    );
}

#[test]
fn untyped_receivers_stay_unresolved() {
    let g = Graph::build(&corpus().join("python"), Config::default()).expect("build");
    let callees = callees_of(&g, "client.py::main");
    // `other.save()` on an untyped loop variable: neither Item.save (guessed) nor Order.save
    assert!(
        !callees.contains("shop/models.py::Order.save"),
        "{callees:?}"
    );
    let (_, _, unresolved) = g.call_stats();
    assert!(unresolved > 0);
}

#[test]
fn rust_module_paths_pick_the_right_sleep() {
    let g = Graph::build(&corpus().join("rust"), Config::default()).expect("build");
    let callees = callees_of(&g, "src/lib.rs::run");
    let want: BTreeSet<String> = [
        "src/time/sleep.rs::sleep",
        "src/thread.rs::sleep",
        "src/util.rs::helper",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // `std::thread::sleep` is external and must not land on thread.rs::sleep a second time
    assert_eq!(callees, want);
}

#[test]
fn methods_sharing_a_name_resolve_by_receiver_type() {
    let g = Graph::build(&corpus().join("rust"), Config::default()).expect("build");
    assert!(callees_of(&g, "src/thread.rs::sleep").contains("src/thread.rs::Handle.reset"));
    assert!(!callees_of(&g, "src/thread.rs::sleep").contains("src/time/sleep.rs::Sleep.reset"));
    assert!(callees_of(&g, "src/time/sleep.rs::sleep").contains("src/time/sleep.rs::Sleep.reset"));
    let go = Graph::build(&corpus().join("go"), Config::default()).expect("build");
    let main = callees_of(&go, "main.go::main");
    assert!(
        main.contains("store/store.go::Store.Get") && main.contains("cache/cache.go::Cache.Get"),
        "{main:?}"
    );
}

#[test]
fn inheritance_and_implementation_edges() {
    use codegraph::EdgeKind;
    let g = Graph::build(&corpus().join("python"), Config::default()).expect("build");
    let inherits: BTreeSet<(String, String)> = g
        .edges()
        .into_iter()
        .filter(|e| e.kind == EdgeKind::Inherits)
        .map(|e| (g.node_name(e.from), g.node_name(e.to)))
        .collect();
    assert!(inherits.contains(&(
        "shop/sessions.py::Session".into(),
        "shop/sessions.py::BaseSession".into()
    )));
    assert!(inherits.contains(&(
        "shop/adapters.py::HTTPAdapter".into(),
        "shop/adapters.py::BaseAdapter".into()
    )));
    let r = Graph::build(&corpus().join("rust"), Config::default()).expect("build");
    let implements: Vec<(String, String)> = r
        .edges()
        .into_iter()
        .filter(|e| e.kind == EdgeKind::Implements)
        .map(|e| (r.node_name(e.from), r.node_name(e.to)))
        .collect();
    assert_eq!(
        implements,
        vec![(
            "src/util.rs::Wall".to_string(),
            "src/util.rs::Clock".to_string()
        )]
    );
    let tested: Vec<String> = r
        .edges()
        .into_iter()
        .filter(|e| e.kind == EdgeKind::TestedBy && r.node_name(e.from) == "src/util.rs::helper")
        .map(|e| r.node_name(e.to))
        .collect();
    assert_eq!(tested, vec!["src/util.rs::tests.helper_counts".to_string()]);
}

#[test]
fn every_language_parses_and_yields_definitions() {
    let samples: [(&str, &str, &str); 6] = [
        (
            "a.c",
            "#include \"b.h\"\nint add(int a, int b) { return helper(a) + b; }\n",
            "add",
        ),
        (
            "a.cpp",
            "namespace n { class Box { public: int size() { return count(); } }; }\nint Box2::f() { return 0; }\n",
            "size",
        ),
        (
            "A.cs",
            "namespace N { public class A : IThing { public void Run() { Other.Go(); } } }\n",
            "Run",
        ),
        (
            "a.rb",
            "class Dog < Animal\n  def bark\n    speak(1)\n  end\nend\n",
            "bark",
        ),
        (
            "a.php",
            "<?php\nnamespace App;\nclass Repo extends Base { public function find($id) { return $this->load($id); } }\n",
            "find",
        ),
        (
            "a.jsx",
            "export function App() { return render(1); }\n",
            "App",
        ),
    ];
    for (name, text, symbol) in samples {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(name), text).expect("write");
        let g = Graph::build(dir.path(), Config::default()).expect("build");
        let e = g.file(name).unwrap_or_else(|| panic!("{name} indexed"));
        assert!(
            e.facts.symbols.iter().any(|s| s.name == symbol),
            "{name}: {:?}",
            e.facts.symbols
        );
        assert!(!e.facts.calls.is_empty(), "{name} has calls");
        assert_eq!(e.facts.parse_errors, 0, "{name} parses cleanly");
    }
}

#[test]
fn parse_errors_are_tolerated() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("broken.py"),
        "def ok():\n    return helper()\n\ndef broken(:\n    pass\n\ndef helper():\n    return 1\n",
    )
    .expect("write");
    let g = Graph::build(dir.path(), Config::default()).expect("build");
    let e = g.file("broken.py").expect("indexed despite errors");
    assert!(e.facts.parse_errors > 0);
    assert!(e.facts.symbols.iter().any(|s| s.name == "ok"));
    assert!(call_pairs(&g).contains(&("broken.py::ok".into(), "broken.py::helper".into())));
}
