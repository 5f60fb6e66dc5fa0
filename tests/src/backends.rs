//! [`per_backend!`](crate::per_backend): one test per store backend;
//! [`per_server_backend!`](crate::per_server_backend): one per server backend.

/// `per_backend!(name => func, ...)`: a module `name` with three tests,
/// `name::sqlite`, `name::postgres`, `name::mysql`, each running
/// `func(Backend::X).await` on a 2-thread tokio runtime. Filter with the
/// backend's name: `cargo test --release --test storage -- postgres`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident => $func:ident),* $(,)?) => {
        $(
            $crate::tests_on_backends!($name, $func, [sqlite Sqlite, postgres Postgres, mysql Mysql]);
        )*
    };
}

/// `per_server_backend!(name => func, ...)`: like [`per_backend!`] without
/// SQLite (one file, one host: what many hosts on one store need is a
/// server): `name::postgres` and `name::mysql`.
#[macro_export]
macro_rules! per_server_backend {
    ($($name:ident => $func:ident),* $(,)?) => {
        $(
            $crate::tests_on_backends!($name, $func, [postgres Postgres, mysql Mysql]);
        )*
    };
}

/// The module of [`per_backend!`] and [`per_server_backend!`]: one test
/// `fn test_name` per `test_name Variant` listed, running
/// `func(Backend::Variant).await`.
#[doc(hidden)]
#[macro_export]
macro_rules! tests_on_backends {
    ($name:ident, $func:ident, [$($test:ident $variant:ident),*]) => {
        mod $name {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$func($crate::Backend::$variant).await
                }
            )*
        }
    };
}
