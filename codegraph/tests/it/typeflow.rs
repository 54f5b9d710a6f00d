//! Rust receivers whose type the resolver follows: indexing, return types, smart pointers and
//! guards, `Deref` impls and type aliases, shadowing `let`s, trait bounds, closure parameters
//! and `macro_rules!` bodies — and the receivers it must leave unresolved.

use std::collections::BTreeSet;
use std::path::Path;

use codegraph::{Config, Graph};

use crate::support::call_pairs;

const LIB: &str = r#"
pub mod list;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use crate::list::LinkedList;

pub struct Level { pending: LinkedList }
impl Level {
    pub fn take(&mut self) -> LinkedList { todo!() }
}

pub struct Guarded { inner: LinkedList }
impl Deref for Guarded {
    type Target = LinkedList;
    fn deref(&self) -> &LinkedList { &self.inner }
}

type Lists = Mutex<LinkedList>;

pub struct Wheel {
    slots: [LinkedList; 4],
    levels: Vec<Level>,
    shared: Arc<Mutex<LinkedList>>,
    guarded: Guarded,
}

impl Wheel {
    pub fn index(&mut self, i: usize) {
        self.slots[i].push_front(1);
    }
    pub fn chain(&mut self, i: usize) {
        let mut entries = self.levels[i].take();
        entries.pop_back();
    }
    pub fn guard(&self) {
        self.shared.lock().unwrap().push_front(2);
    }
    pub fn deref(&self) {
        self.guarded.pop_back();
    }
    pub fn alias(lists: &Lists) {
        lists.lock().unwrap().pop_back();
    }
    fn with_level<R>(&mut self, f: impl FnOnce(&mut Level) -> R) -> R {
        f(&mut self.levels[0])
    }
    pub fn closure(&mut self) {
        self.with_level(|l| l.take());
    }
    pub fn untyped(&self, v: Vec<u8>) {
        v.iter().for_each(|l| l.take());
    }
}

pub fn wrapped() {
    let shared = Arc::new(Mutex::new(LinkedList::new()));
    shared.lock().unwrap().push_front(3);
}

pub struct Builder;
pub struct Frozen;
impl Builder {
    pub fn new() -> Builder { Builder }
    pub fn freeze(self) -> Frozen { Frozen }
    pub fn len(&self) -> usize { 0 }
}
impl Frozen {
    pub fn len(&self) -> usize { 1 }
}

pub fn opt(o: Option<Frozen>) -> Option<usize> {
    o.map(|f| f.len())
}

pub fn shadow() {
    let b = Builder::new();
    b.len();
    let b = b.freeze();
    b.len();
}

pub trait Buf {
    fn remaining(&self) -> usize;
    fn has(&self) -> bool { self.remaining() > 0 }
}
pub fn bounded<T: Buf>(b: &mut T) -> bool { b.has() }
pub fn dynamic(b: &dyn Buf) -> usize { b.remaining() }
pub struct Chain<T, U> { a: T, b: U }
impl<T: Buf, U: Buf> Chain<T, U> {
    pub fn total(&self) -> usize { self.a.remaining() + self.b.remaining() }
}

macro_rules! forward {
    ($this:ident) => { $this.remaining(); helper(); };
}
macro_rules! make {
    () => { pub fn made() { helper(); } };
}
make!();
pub fn helper() {}
pub fn uses(b: &dyn Buf) { forward!(b); }
"#;

const LIST: &str = r#"
pub struct LinkedList;
impl LinkedList {
    pub fn new() -> LinkedList { LinkedList }
    pub fn push_front(&mut self, v: u32) {}
    pub fn pop_back(&mut self) -> Option<u32> { None }
}
"#;

fn write(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"flow\"\nversion = \"0.1.0\"\n",
    )
    .expect("write");
    std::fs::write(dir.join("src/lib.rs"), LIB).expect("write");
    std::fs::write(dir.join("src/list.rs"), LIST).expect("write");
}

fn callees(g: &Graph, caller: &str) -> BTreeSet<String> {
    call_pairs(g)
        .into_iter()
        .filter(|(a, _)| a == caller)
        .map(|(_, b)| b)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn receivers_are_followed_through_types_and_left_alone_when_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path());
    let g = Graph::build(dir.path(), Config::default()).expect("build");
    let push = "src/list.rs::LinkedList.push_front";
    let pop = "src/list.rs::LinkedList.pop_back";
    let cases: &[(&str, &[&str])] = &[
        // an array element
        ("src/lib.rs::Wheel.index", &[push]),
        // a Vec element's method, then its return type
        ("src/lib.rs::Wheel.chain", &["src/lib.rs::Level.take", pop]),
        // Arc<Mutex<_>> through lock() and unwrap()
        ("src/lib.rs::Wheel.guard", &[push]),
        // a Deref impl of the repository
        ("src/lib.rs::Wheel.deref", &[pop]),
        // a type alias
        ("src/lib.rs::Wheel.alias", &[pop]),
        // a closure parameter typed by the callee's FnOnce(&mut Level) bound
        (
            "src/lib.rs::Wheel.closure",
            &["src/lib.rs::Wheel.with_level", "src/lib.rs::Level.take"],
        ),
        // a closure parameter of an outside function: unknown, not guessed
        ("src/lib.rs::Wheel.untyped", &[]),
        // Arc::new(Mutex::new(LinkedList::new())) types the binding
        (
            "src/lib.rs::wrapped",
            &["src/list.rs::LinkedList.new", push],
        ),
        // `let b = b.freeze()` re-types only the later use
        (
            "src/lib.rs::shadow",
            &[
                "src/lib.rs::Builder.new",
                "src/lib.rs::Builder.len",
                "src/lib.rs::Builder.freeze",
                "src/lib.rs::Frozen.len",
            ],
        ),
        // a closure given to Option::map gets what the option holds
        ("src/lib.rs::opt", &["src/lib.rs::Frozen.len"]),
        // a bounded generic and a dyn Trait call the trait's method
        ("src/lib.rs::bounded", &["src/lib.rs::Buf.has"]),
        ("src/lib.rs::dynamic", &["src/lib.rs::Buf.remaining"]),
        ("src/lib.rs::Chain.total", &["src/lib.rs::Buf.remaining"]),
        // a macro body's calls are the macro's; `$this.remaining()` has no knowable receiver
        ("src/lib.rs::forward", &["src/lib.rs::helper"]),
        ("src/lib.rs::uses", &["src/lib.rs::forward"]),
        // a function a macro body defines is a node
        ("src/lib.rs::make.made", &["src/lib.rs::helper"]),
    ];
    let mut wrong = Vec::new();
    for (caller, want) in cases {
        let got = callees(&g, caller);
        if got != set(want) {
            wrong.push(format!("{caller}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let (_, _, unresolved) = g.call_stats();
    assert!(
        unresolved >= 2,
        "the unknown receivers are counted as unresolved"
    );
}

#[test]
fn python_attributes_and_return_annotations_type_receivers() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("pkg")).expect("mkdir");
    std::fs::write(dir.path().join("pkg/__init__.py"), "").expect("write");
    std::fs::write(
        dir.path().join("pkg/adapters.py"),
        "class Adapter:\n    def send(self):\n        pass\n\nclass Other:\n    def send(self):\n        pass\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("pkg/session.py"),
        "from .adapters import Adapter\n\n\
         class Session:\n    def __init__(self, adapter: Adapter, other):\n        \
         self.adapter = adapter\n        self.other = other\n\n    \
         def go(self):\n        self.adapter.send()\n        self.other.send()\n\n    \
         def factory(self) -> Adapter:\n        return self.adapter\n\n    \
         def chained(self):\n        self.factory().send()\n        self.unknown().send()\n",
    )
    .expect("write");
    let g = Graph::build(dir.path(), Config::default()).expect("build");
    assert_eq!(
        callees(&g, "pkg/session.py::Session.go"),
        set(&["pkg/adapters.py::Adapter.send"]),
        "the typed parameter's attribute resolves, the untyped one is not guessed"
    );
    assert_eq!(
        callees(&g, "pkg/session.py::Session.chained"),
        set(&[
            "pkg/session.py::Session.factory",
            "pkg/adapters.py::Adapter.send"
        ]),
        "a call on a call follows the return annotation"
    );
}

#[test]
fn a_changed_implementation_impacts_the_callers_of_the_method_it_implements() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"disp\"\nversion = \"0.1.0\"\n",
    )
    .expect("write");
    let lib = "pub trait Buf {\n    fn remaining(&self) -> usize;\n}\n\
               pub struct Bytes;\n\
               impl Buf for Bytes {\n    fn remaining(&self) -> usize {\n        0\n    }\n}\n\
               pub fn user(b: &dyn Buf) -> usize {\n    b.remaining()\n}\n";
    std::fs::write(dir.path().join("src/lib.rs"), lib).expect("write");
    let g = Graph::build(dir.path(), Config::default()).expect("build");
    // the direct view: the call names the trait's method, not the implementation
    assert_eq!(
        callees(&g, "src/lib.rs::user"),
        set(&["src/lib.rs::Buf.remaining"])
    );
    // line 7 is inside `Bytes::remaining`
    let blast = g.blast_radius(&[codegraph::Change {
        path: "src/lib.rs".to_string(),
        ranges: vec![(7, 7)],
    }]);
    let user = blast
        .impacted
        .iter()
        .find(|i| i.symbol.name == "user")
        .unwrap_or_else(|| panic!("user is impacted: {:?}", blast.impacted));
    assert_eq!(user.via, codegraph::EdgeKind::Dispatch);
    assert_eq!(user.depends_on.name, "Bytes.remaining");
}

#[test]
fn deeply_nested_macros_are_parsed_a_bounded_number_of_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"deep\"\nversion = \"0.1.0\"\n",
    )
    .expect("write");
    let depth = 3000;
    let body = format!(
        "pub fn helper() {{}}\npub fn f() {{ {}helper(){}; }}\n",
        "m!(\n".repeat(depth),
        ")\n".repeat(depth)
    );
    std::fs::write(dir.path().join("src/lib.rs"), body).expect("write");
    let g = Graph::build(dir.path(), Config::default()).expect("build");
    assert!(g.file("src/lib.rs").is_some(), "the file is indexed");
}

#[test]
fn a_changed_return_type_moves_the_edges_of_callers_that_chain_through_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"chain\"\nversion = \"0.1.0\"\n",
    )
    .expect("write");
    let make = |ret: &str| {
        format!(
            "pub struct Foo;\nimpl Foo {{\n    pub fn go(&self) {{}}\n}}\n\
             pub struct Other;\nimpl Other {{\n    pub fn go(&self) {{}}\n}}\n\
             pub fn make() -> {ret} {{\n    todo!()\n}}\n"
        )
    };
    std::fs::write(dir.path().join("src/make.rs"), make("Foo")).expect("write");
    std::fs::write(
        dir.path().join("src/lib.rs"),
        "pub mod make;\npub fn user() {\n    let v = make::make();\n    v.go();\n}\n",
    )
    .expect("write");
    let mut g = Graph::build(dir.path(), Config::default()).expect("build");
    assert_eq!(
        callees(&g, "src/lib.rs::user"),
        set(&["src/make.rs::make", "src/make.rs::Foo.go"])
    );
    // a different length, so the edit is seen whatever the file system's time resolution
    std::fs::write(dir.path().join("src/make.rs"), make("Other")).expect("write");
    g.update(dir.path()).expect("update");
    assert_eq!(
        callees(&g, "src/lib.rs::user"),
        set(&["src/make.rs::make", "src/make.rs::Other.go"]),
        "the caller in another file is resolved again"
    );
    let fresh = Graph::build(dir.path(), Config::default()).expect("rebuild");
    assert_eq!(call_pairs(&g), call_pairs(&fresh));
}
