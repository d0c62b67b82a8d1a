//! The PostgreSQL server the tests use: `HOTATE_TEST_POSTGRES` names it (tests/run starts
//! a throwaway cluster with `tests/postgres.sh` and sets it).

/// A new, empty database on the test server, as a `--meta` URL; `None` (the test skips)
/// when there is no server, except under `CI=true`, where the test fails.
///
/// # Panics
/// When the server is named but refuses to create the database.
pub fn fresh_database(test: &str) -> Option<String> {
    let server = std::env::var("HOTATE_TEST_POSTGRES").ok();
    if !crate::needs(
        test,
        "a PostgreSQL server (tests/run starts one; or set HOTATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB)",
        server.is_some(),
    ) {
        return None;
    }
    let server = server?;
    let name = format!(
        "hotate_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // The sync client runs its own runtime: keep it off any caller's runtime.
    let created = std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = postgres::Client::connect(&server, postgres::NoTls)?;
            client.batch_execute(&format!("CREATE DATABASE {name}"))
        })
        .join()
    });
    match created {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("creating database {name} on {server}: {e}"),
        Err(_) => panic!("creating database {name} on {server} panicked"),
    }
    let (base, _) = server.rsplit_once('/').expect("a URL ending in /DB");
    Some(format!("{base}/{name}"))
}
