//! What one file says on its own, before anything is resolved: its definitions, imports,
//! call sites, inheritance clauses and local type hints. Extraction (`extract/`) produces a
//! [`FileFacts`] per file; resolution (`resolve.rs`) links them across files.

use serde::{Deserialize, Serialize};

use crate::lang::Lang;

/// The kind of a symbol node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SymbolKind {
    /// A module or namespace declared inside a file (Rust `mod x { }`, C++/C# namespace, Ruby module).
    Module,
    /// A class, struct, trait, interface or enum.
    Type,
    /// A free function.
    Function,
    /// A function that belongs to a type.
    Method,
    /// A test function or test case.
    Test,
    /// A macro definition (Rust `macro_rules!`); calls written in its body start from it.
    Macro,
}

/// A type as written: a path of names (`["std", "Vec"]`, `["Session"]`).
pub type TypePath = Vec<String>;

/// A type as written with its generic arguments (Rust): `Arc<Semaphore>`, `Vec<Slot>`,
/// `MutexGuard<'_, LinkedList<T>>`. Lifetimes, references and raw pointers are dropped; arrays
/// and slices are the path `[]` with the element as the argument; a generic parameter with a
/// trait bound is replaced by the bound where the extractor saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ty {
    /// The type's path (`["std", "sync", "Arc"]`).
    pub path: TypePath,
    /// Its generic type arguments, in order.
    pub args: Vec<Ty>,
}

impl Ty {
    /// Whether the type mentions a name for which `hit` is true (incremental invalidation).
    pub fn mentions(&self, hit: &dyn Fn(&str) -> bool) -> bool {
        self.path.iter().any(|p| hit(p)) || self.args.iter().any(|a| a.mentions(hit))
    }
}

/// An expression whose value's type the resolver can follow step by step (Rust receivers and
/// `let` initialisers): `self.delay.as_mut()`, `self.slot[i]`, `Arc::new(Semaphore::new(1))`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expr {
    /// A name or path: a local, `self`, a constant, a function or a type.
    Path(Vec<String>),
    /// `e.name` (a field; `e.0` for tuple fields).
    Field(Box<Expr>, String),
    /// `e.name(..)`: a method call.
    Method(Box<Expr>, String),
    /// `f(..)`: a call of a path or expression; the first argument is kept when the callee is a
    /// constructor that wraps it (`Arc::new(x)`, `Some(x)`).
    Call(Box<Expr>, Option<Box<Expr>>),
    /// `e[i]`.
    Index(Box<Expr>),
    /// `e?`.
    Try(Box<Expr>),
    /// Type argument `i` of `e`'s type: what `Some(x)` / `Ok(x)` (0) or `Err(x)` (1) binds.
    Arg(Box<Expr>, u32),
    /// A value whose type is written: `T { .. }`, `e as T`.
    Typed(Ty),
    /// Parameter `param` of a closure passed as argument `arg` to `callee` (a path or a
    /// `Method`): typed from the callee's `Fn(..)` bound on that argument.
    ClosureParam {
        /// The called function or method (`Method(recv, name)` for a method).
        callee: Box<Expr>,
        /// Position of the closure among the call's arguments (`self` not counted).
        arg: u32,
        /// Position of the parameter in the closure.
        param: u32,
    },
    /// Anything else (literals, closures, blocks, arithmetic).
    Unknown,
}

impl Expr {
    /// Whether the expression mentions a name for which `hit` is true (incremental
    /// invalidation).
    pub fn mentions(&self, hit: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Expr::Path(p) => p.iter().any(|s| hit(s)),
            Expr::Field(e, n) | Expr::Method(e, n) => hit(n) || e.mentions(hit),
            Expr::Call(e, a) => e.mentions(hit) || a.as_ref().is_some_and(|a| a.mentions(hit)),
            Expr::Index(e) | Expr::Try(e) | Expr::Arg(e, _) => e.mentions(hit),
            Expr::Typed(t) => t.mentions(hit),
            Expr::ClosureParam { callee, .. } => callee.mentions(hit),
            Expr::Unknown => false,
        }
    }
}

/// Where a local variable's type comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypeHint {
    /// Declared type (`x: Foo`, `Foo x`).
    Declared(TypePath),
    /// Assigned from a call (`x = Foo()`, `let x = Foo::new()`, `x := NewFoo()`).
    CallOf(TypePath),
    /// Declared type with its generic arguments (Rust parameters and fields).
    Ty(Box<Ty>),
    /// A Rust `let`: its declared type or its initialiser, visible on lines `from..=to` (the
    /// statements after it in its block). A later `let` of the same name shadows it.
    Let {
        /// The declared type, if written.
        ty: Option<Box<Ty>>,
        /// The initialiser, if any.
        value: Option<Box<Expr>>,
        /// First line the binding is visible on.
        from: u32,
        /// Last line it is visible on (the end of its block).
        to: u32,
    },
}

impl TypeHint {
    /// A Rust binding visible on lines `from..=to`.
    pub fn binding(ty: Option<Ty>, value: Option<Expr>, from: u32, to: u32) -> TypeHint {
        TypeHint::Let {
            ty: ty.map(Box::new),
            value: value.map(Box::new),
            from,
            to,
        }
    }

    /// Whether the hint mentions a name for which `hit` is true (incremental invalidation).
    pub fn mentions(&self, hit: &dyn Fn(&str) -> bool) -> bool {
        match self {
            TypeHint::Declared(p) | TypeHint::CallOf(p) => p.iter().any(|s| hit(s)),
            TypeHint::Ty(t) => t.mentions(hit),
            TypeHint::Let { ty, value, .. } => {
                ty.as_ref().is_some_and(|t| t.mentions(hit))
                    || value.as_ref().is_some_and(|v| v.mentions(hit))
            }
        }
    }
}

/// What a Rust signature says beyond names: full types and generic parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sig {
    /// The declared return type with its arguments.
    pub ret: Option<Ty>,
    /// For a method in an `impl` block: the block's self type as written (`Mutex<T>`).
    pub self_ty: Option<Ty>,
    /// For a type: its generic type parameters, in order.
    pub generics: Vec<String>,
    /// Generic parameters of the function (and its `impl` block) with their first trait bound.
    pub bounds: Vec<(String, Ty)>,
    /// For a function: its parameters' types in order (`self` not counted; `None` when unknown).
    pub params: Vec<Option<Ty>>,
}

/// A definition in a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    /// The name as written.
    pub name: String,
    /// What it is.
    pub kind: SymbolKind,
    /// The enclosing symbol in the same file (index into [`FileFacts::symbols`]).
    pub parent: Option<u32>,
    /// For methods declared outside their type (Rust `impl`, Go receivers, C++ `A::f`): the type as written.
    pub owner: Option<TypePath>,
    /// First line, 1-based.
    pub start_line: u32,
    /// Last line, 1-based, inclusive.
    pub end_line: u32,
    /// Base classes (INHERITS).
    pub bases: Vec<TypePath>,
    /// Implemented interfaces or traits (IMPLEMENTS).
    pub implements: Vec<TypePath>,
    /// Declared return type, when it names a type.
    pub ret: Option<TypePath>,
    /// Local variables, parameters and (for types) fields with a known type source.
    pub locals: Vec<(String, TypeHint)>,
    /// Full types and generics of the signature (Rust).
    pub sig: Option<Box<Sig>>,
}

/// An import, `use`, `require` or `#include`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    /// Line, 1-based.
    pub line: u32,
    /// The enclosing symbol whose scope the import is visible in (`None`: the file).
    pub scope: Option<u32>,
    /// The module path as written (segments; a single specifier for JS, Go and includes).
    pub path: Vec<String>,
    /// Python relative-import level (number of leading dots).
    pub level: u32,
    /// The member imported from the module (`from m import name`, `import {name} from`).
    pub name: Option<String>,
    /// The local name bound (`None` for glob imports and includes).
    pub alias: Option<String>,
    /// `from m import *`, `use m::*`, `export * from`, `#include`, `using Ns;`.
    pub glob: bool,
}

impl Import {
    /// An import of `path` at `line`, visible in the whole file, binding nothing by itself: set
    /// `name`, `alias`, `glob` or `level` on top where the language says more.
    pub fn new(line: u32, path: Vec<String>) -> Self {
        Self {
            line,
            scope: None,
            path,
            level: 0,
            name: None,
            alias: None,
            glob: false,
        }
    }
}

/// A call site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The enclosing symbol (`None`: top level of the file).
    pub from: Option<u32>,
    /// Line, 1-based.
    pub line: u32,
    /// The callee as a path of names; the first may be `self`, `this`, `super`, `Self`, `crate`.
    pub path: Vec<String>,
    /// The receiver is an expression the graph cannot name (`f().g()`, `a[0].g()`); `path` is `[g]`.
    pub opaque_receiver: bool,
    /// A method call's receiver as an expression to follow (Rust); `path` is `[method]`.
    pub recv: Option<Box<Expr>>,
    /// A macro invocation (`name!(..)`): `path` names a macro.
    pub mac: bool,
}

/// A trait implemented for a type outside the type's definition (Rust `impl Trait for Type`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impl {
    /// Line, 1-based.
    pub line: u32,
    /// The enclosing module symbol, if any.
    pub scope: Option<u32>,
    /// The implementing type as written.
    pub ty: TypePath,
    /// The trait as written.
    pub tr: TypePath,
    /// The implementing type with its generic arguments (`MutexGuard<T>`).
    pub self_ty: Option<Ty>,
    /// Associated types of `Deref` and `Index` impls (`Target`, `Output`).
    pub assoc: Vec<(String, Ty)>,
}

/// Everything extracted from one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFacts {
    /// The language it was parsed as.
    pub lang: Lang,
    /// Definitions, in source order (parents before children).
    pub symbols: Vec<Symbol>,
    /// Imports, in source order.
    pub imports: Vec<Import>,
    /// Call sites, in source order.
    pub calls: Vec<Call>,
    /// `impl Trait for Type` blocks (Rust): IMPLEMENTS edges whose ends may live in other files.
    pub impls: Vec<Impl>,
    /// Declared package or namespace (Go `package`, Java `package`, C# file-scoped namespace, PHP namespace).
    pub package: Option<String>,
    /// Number of error nodes in the syntax tree (the file is still used).
    pub parse_errors: u32,
    /// Number of lines.
    pub lines: u32,
}

impl FileFacts {
    /// Facts of a file with nothing in it.
    pub fn empty(lang: Lang) -> FileFacts {
        FileFacts {
            lang,
            symbols: Vec::new(),
            imports: Vec::new(),
            calls: Vec::new(),
            impls: Vec::new(),
            package: None,
            parse_errors: 0,
            lines: 0,
        }
    }

    /// The dotted name of a symbol inside its file (`Outer.Inner.method`).
    pub fn qualified_name(&self, index: u32) -> String {
        let mut parts = Vec::new();
        let mut cur = Some(index);
        while let Some(i) = cur {
            let sym = &self.symbols[i as usize];
            parts.push(sym.name.as_str());
            if let Some(last) = sym.owner.as_ref().and_then(|o| o.last()) {
                parts.push(last);
            }
            cur = sym.parent;
        }
        parts.reverse();
        parts.join(".")
    }

    /// What other files can depend on: names, kinds, owners, bases, return types, fields and
    /// imports. When this is unchanged after an edit, other files' edges stay valid.
    pub(crate) fn interface_eq(&self, other: &FileFacts) -> bool {
        self.package == other.package
            && self.impls == other.impls
            && self.imports.len() == other.imports.len()
            && self.imports.iter().zip(&other.imports).all(|(a, b)| {
                a.path == b.path
                    && a.level == b.level
                    && a.name == b.name
                    && a.alias == b.alias
                    && a.glob == b.glob
                    && a.scope == b.scope
            })
            && self.symbols.len() == other.symbols.len()
            && self.symbols.iter().zip(&other.symbols).all(|(a, b)| {
                a.name == b.name
                    && a.kind == b.kind
                    && a.parent == b.parent
                    && a.owner == b.owner
                    && a.bases == b.bases
                    && a.implements == b.implements
                    && a.ret == b.ret
                    && a.sig == b.sig
                    && (a.kind != SymbolKind::Type || a.locals == b.locals)
            })
    }
}
