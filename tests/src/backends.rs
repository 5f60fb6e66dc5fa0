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
            mod $name {
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$func($crate::Backend::Sqlite).await
                }
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$func($crate::Backend::Postgres).await
                }
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    super::$func($crate::Backend::Mysql).await
                }
            }
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
            mod $name {
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$func($crate::Backend::Postgres).await
                }
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    super::$func($crate::Backend::Mysql).await
                }
            }
        )*
    };
}
