//! The contract every metadata backend keeps, as tests over `&dyn Metadata`: a backend's
//! own test module calls [`check`] with a function that opens a fresh, empty instance.
//! What is specific to one backend (migrations, its locking) stays with it.

use hotate_engine::{Entry, Hash, Offer};

use super::{
    DiskRow, JobReport, MetaError, Metadata, Role, Session, UpdateQuery, UpdateState, UploadReport,
    VersionRow, WhichUpdates, now,
};

/// One check of the contract, on a fresh instance.
type Check = fn(&dyn Metadata);

/// Runs every check of the contract, each on a fresh instance from `open`.
pub fn check(open: &dyn Fn() -> Box<dyn Metadata>) {
    let checks: [(&str, Check); 10] = [
        ("users and roles", users_and_roles),
        ("tokens and sessions", tokens_and_sessions),
        ("disks and versions", disks_and_versions),
        ("reserving a disk", reserving_a_disk),
        (
            "sessions, offers and the commit",
            sessions_offers_and_the_commit,
        ),
        ("abort and cancel", abort_and_cancel),
        ("listing updates a page at a time", listing_updates),
        ("deleting and pruning", deleting_and_pruning),
        ("upkeep and the write lock", upkeep_and_the_write_lock),
        (
            "transfer servers and store leases",
            transfer_servers_and_leases,
        ),
    ];
    for (name, check) in checks {
        eprintln!("metadata contract: {name}");
        check(open().as_ref());
    }
}

/// Version `id` of disk `d`.
pub fn version(id: &str, parent: Option<&str>) -> VersionRow {
    VersionRow {
        disk_id: "d".into(),
        id: id.into(),
        parent: parent.map(str::to_owned),
        comment: String::new(),
        user: "u".into(),
        terminal: String::new(),
        created_at: 0,
        root: Hash::of(id.as_bytes()),
        blocks_changed: 0,
        bytes_stored: 0,
    }
}

/// User `u` (the first, so an admin) and disk `d` named `disk` with its first version
/// `v1`; the session of `u` on terminal PC-1.
pub fn user_and_disk(meta: &dyn Metadata) -> Session {
    meta.add_user("u", "x", None).unwrap();
    let disk = DiskRow {
        id: "d".into(),
        name: "disk".into(),
        size: 1,
        block_size: 1 << 16,
        created_at: 0,
    };
    meta.create_disk(&disk, &version("v1", None)).unwrap();
    Session {
        user: "u".into(),
        terminal: "PC-1".into(),
        role: Role::Admin,
    }
}

fn other_terminal() -> Session {
    Session {
        user: "u".into(),
        terminal: "PC-2".into(),
        role: Role::Admin,
    }
}

fn offer(index: u64, seed: &[u8]) -> Offer {
    Offer {
        index,
        entry: Entry::Chunk(Hash::of(seed)),
    }
}

fn users_and_roles(meta: &dyn Metadata) {
    assert_eq!(meta.add_user("first", "h1", None).unwrap(), Role::Admin);
    assert_eq!(meta.add_user("next", "h2", None).unwrap(), Role::Operator);
    assert_eq!(
        meta.add_user("boss", "h3", Some(Role::Admin)).unwrap(),
        Role::Admin
    );
    assert!(matches!(
        meta.add_user("next", "h4", None),
        Err(MetaError::UserExists(_))
    ));
    assert_eq!(meta.role("next").unwrap(), Some(Role::Operator));
    assert_eq!(meta.role("nobody").unwrap(), None);
    assert_eq!(meta.password_hash("next").unwrap().as_deref(), Some("h2"));
    meta.set_password("next", "h5").unwrap();
    assert_eq!(meta.password_hash("next").unwrap().as_deref(), Some("h5"));
    let names: Vec<String> = meta.users().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["boss", "first", "next"], "by name");
    meta.set_role("next", Role::Admin).unwrap();
    assert_eq!(meta.role("next").unwrap(), Some(Role::Admin));
    assert!(matches!(
        meta.set_role("nobody", Role::Admin),
        Err(MetaError::UnknownUser(_))
    ));
    meta.delete_user("next").unwrap();
    assert_eq!(meta.password_hash("next").unwrap(), None);
    assert!(matches!(
        meta.delete_user("next"),
        Err(MetaError::UnknownUser(_))
    ));
}

fn tokens_and_sessions(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    let (live, expired) = (Hash::of(b"live"), Hash::of(b"expired"));
    meta.add_token(&live, &session, now() + 60).unwrap();
    meta.add_token(&expired, &session, now() - 1).unwrap();
    assert_eq!(meta.session(&live).unwrap(), Some(session.clone()));
    assert_eq!(meta.session(&expired).unwrap(), None, "expired");
    assert_eq!(meta.session(&Hash::of(b"unknown")).unwrap(), None);
    meta.remove_token(&live).unwrap();
    assert_eq!(meta.session(&live).unwrap(), None, "logged out");
    // A new password and a deleted user end the sessions.
    meta.add_token(&live, &session, now() + 60).unwrap();
    meta.set_password("u", "y").unwrap();
    assert_eq!(meta.session(&live).unwrap(), None);
    meta.add_token(&live, &session, now() + 60).unwrap();
    meta.delete_user("u").unwrap();
    assert_eq!(meta.session(&live).unwrap(), None);
}

fn disks_and_versions(meta: &dyn Metadata) {
    user_and_disk(meta);
    assert_eq!(meta.disk("d").unwrap().name, "disk");
    assert_eq!(meta.disk("disk").unwrap().id, "d", "by name too");
    assert!(matches!(meta.disk("nope"), Err(MetaError::UnknownDisk(_))));
    let again = DiskRow {
        id: "d2".into(),
        name: "disk".into(),
        size: 1,
        block_size: 1 << 16,
        created_at: 0,
    };
    assert!(matches!(
        meta.create_disk(&again, &version("w1", None)),
        Err(MetaError::DiskExists(_))
    ));
    assert_eq!(meta.disks().unwrap().len(), 1);
    assert_eq!(meta.latest_version("d").unwrap().id, "v1");
    assert!(meta.version_exists("d", "v1").unwrap());
    assert!(!meta.version_exists("d", "v9").unwrap());
    assert!(matches!(
        meta.version("d", "v9"),
        Err(MetaError::UnknownVersion(_))
    ));
    // A migration adds versions as they are, once.
    let v2 = VersionRow {
        comment: "copied".into(),
        created_at: 42,
        ..version("v2", Some("v1"))
    };
    assert!(meta.add_version(&v2).unwrap());
    assert!(!meta.add_version(&v2).unwrap(), "once");
    assert_eq!(meta.latest_version("d").unwrap(), v2);
    meta.set_comment("d", "v1", "教室の新しい版").unwrap();
    assert_eq!(meta.version("d", "v1").unwrap().comment, "教室の新しい版");
    assert!(matches!(
        meta.set_comment("d", "v9", "x"),
        Err(MetaError::UnknownVersion(_))
    ));
    let elsewhere = VersionRow {
        disk_id: "nope".into(),
        ..version("v3", None)
    };
    assert!(matches!(
        meta.add_version(&elsewhere),
        Err(MetaError::UnknownDisk(_))
    ));
}

fn reserving_a_disk(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    let secret = Hash::of(b"s");
    assert!(matches!(
        meta.start_update("d", "v0", &session, "g", &secret),
        Err(MetaError::NotLatest { .. })
    ));
    let (update, adopted) = meta
        .start_update("d", "v1", &session, "g", &secret)
        .unwrap();
    assert!(!adopted);
    assert_eq!(update.state, UpdateState::Reserved);
    assert_eq!(
        meta.live_update("d").unwrap().map(|u| u.guid),
        Some("g".into())
    );
    // The same user and terminal take their own update back; another terminal may not.
    let (again, adopted) = meta
        .start_update("d", "v1", &session, "g2", &secret)
        .unwrap();
    assert!(adopted);
    assert_eq!(again.guid, "g");
    assert!(matches!(
        meta.start_update("d", "v1", &other_terminal(), "g3", &secret),
        Err(MetaError::DiskBusy { .. })
    ));
    assert!(matches!(
        meta.update("g3"),
        Err(MetaError::UnknownUpdate(_))
    ));
}

fn sessions_offers_and_the_commit(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    meta.start_update("d", "v1", &session, "g", &Hash::of(b"s"))
        .unwrap();
    meta.set_state("g", UpdateState::Uploading, None).unwrap();
    let first = meta.open_session("g").unwrap();
    meta.record_offers("g", first.session, &[offer(3, b"a"), offer(1, b"b")])
        .unwrap();
    meta.add_received("g", 2, 100).unwrap();
    let second = meta.open_session("g").unwrap();
    assert!(second.session > first.session);
    assert!(matches!(
        meta.record_offers("g", first.session, &[offer(4, b"c")]),
        Err(MetaError::TakenOver)
    ));
    assert!(
        meta.offers("g", second.session).unwrap().is_empty(),
        "each session offers anew"
    );
    meta.record_offers("g", second.session, &[offer(3, b"a"), offer(1, b"b")])
        .unwrap();
    let indexes: Vec<u64> = meta
        .offers("g", second.session)
        .unwrap()
        .iter()
        .map(|o| o.index)
        .collect();
    assert_eq!(indexes, [1, 3], "by block index");
    assert_eq!(meta.update("g").unwrap().bytes_received, 100);
    let hashes = meta.live_hashes().unwrap();
    assert!(hashes.contains(&Hash::of(b"a")) && hashes.contains(&Hash::of(b"b")));
    assert!(
        !hashes.contains(&Hash::of(b"c")),
        "a refused offer is not recorded"
    );

    let v2 = version("v2", Some("v1"));
    let stale = meta.commit("g", first.session, &v2, || Ok::<_, MetaError>(()));
    assert!(matches!(stale, Err(MetaError::TakenOver)));
    meta.commit("g", second.session, &v2, || Ok::<_, MetaError>(()))
        .unwrap();
    let update = meta.update("g").unwrap();
    assert_eq!(update.state, UpdateState::Committed);
    assert_eq!(update.new_version.as_deref(), Some("v2"));
    assert_eq!(meta.latest_version("d").unwrap().id, "v2");
    let ids: Vec<String> = meta
        .versions("d")
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, ["v1", "v2"], "oldest first");
    assert!(meta.live_update("d").unwrap().is_none());
    assert!(meta.live_hashes().unwrap().is_empty(), "no live update");
    assert!(matches!(
        meta.set_state("g", UpdateState::Cancelled, None),
        Err(MetaError::UpdateNotLive { .. })
    ));
}

fn abort_and_cancel(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    let secret = Hash::of(b"secret");
    meta.start_update("d", "v1", &session, "g", &secret)
        .unwrap();
    meta.set_state("g", UpdateState::Uploading, None).unwrap();
    let open = meta.open_session("g").unwrap();
    meta.record_offers("g", open.session, &[offer(0, b"a")])
        .unwrap();
    // An abort puts the update back to reserved and discards the upload.
    let aborted = meta.abort_upload("g", "chief").unwrap();
    assert_eq!(aborted.state, UpdateState::Reserved);
    assert_eq!(aborted.stopped_by.as_deref(), Some("chief"));
    assert!(matches!(
        meta.record_offers("g", open.session, &[offer(1, b"b")]),
        Err(MetaError::UploadAborted)
    ));
    assert!(meta.offers("g", open.session).unwrap().is_empty());
    // The terminal's cancel needs its secret; a wrong one and an unknown update alike fail.
    assert!(matches!(
        meta.cancel_with_secret("g", &Hash::of(b"wrong")),
        Err(MetaError::BadSecret)
    ));
    assert!(matches!(
        meta.cancel_with_secret("nope", &secret),
        Err(MetaError::BadSecret)
    ));
    let cancelled = meta.cancel_with_secret("g", &secret).unwrap();
    assert_eq!(cancelled.state, UpdateState::Cancelled);
    assert_eq!(
        cancelled.stopped_by,
        Some(session.user.clone()),
        "its own user"
    );
    assert!(matches!(
        meta.abort_upload("g", "chief"),
        Err(MetaError::UpdateNotLive { .. })
    ));
}

fn listing_updates(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    let other = other_terminal();
    // Identifiers that sort against the order of starting, all started in one second.
    let ended = ["zz", "mm", "aa", "kk", "bb"];
    for guid in ended {
        meta.start_update("d", "v1", &session, guid, &Hash::of(b"s"))
            .unwrap();
        meta.set_state(guid, UpdateState::Cancelled, Some("chief"))
            .unwrap();
    }
    meta.start_update("d", "v1", &other, "live", &Hash::of(b"s"))
        .unwrap();
    let guids = |query: &UpdateQuery| -> Vec<String> {
        let rows = meta.updates(query).unwrap();
        rows.into_iter().map(|u| u.guid).collect()
    };
    // Live first, then ended ones newest first.
    assert_eq!(
        guids(&UpdateQuery::all()),
        ["live", "bb", "kk", "aa", "mm", "zz"]
    );
    assert_eq!(guids(&UpdateQuery::live()), ["live"]);
    // Each terminal's latest update, by name; an operator's own only.
    let latest: Vec<(String, String)> = meta
        .terminals(None)
        .unwrap()
        .into_iter()
        .map(|u| (u.terminal, u.guid))
        .collect();
    assert_eq!(
        latest,
        [
            (session.terminal.clone(), "bb".to_owned()),
            (other.terminal.clone(), "live".to_owned())
        ]
    );
    assert_eq!(meta.terminals(Some(&session.user)).unwrap().len(), 2);
    assert!(meta.terminals(Some("nobody")).unwrap().is_empty());
    let listed = meta.updates(&UpdateQuery::all()).unwrap();
    assert_eq!(listed[0].stopped_by, None, "still live");
    assert_eq!(listed[1].stopped_by.as_deref(), Some("chief"));
    // Pages of two ended updates, each after the last one of the page before.
    let mut query = UpdateQuery {
        which: WhichUpdates::Ended,
        limit: 2,
        ..UpdateQuery::all()
    };
    let mut pages = Vec::new();
    loop {
        let page = meta.updates(&query).unwrap();
        let Some(last) = page.last() else { break };
        query.before = Some(last.seq);
        pages.push(page.iter().map(|u| u.guid.clone()).collect::<Vec<_>>());
    }
    assert_eq!(pages, [vec!["bb", "kk"], vec!["aa", "mm"], vec!["zz"]]);
    // Filters.
    let by = |which, user: Option<&str>, terminal: Option<&str>| UpdateQuery {
        which,
        user: user.map(str::to_owned),
        terminal: terminal.map(str::to_owned),
        ..UpdateQuery::all()
    };
    assert_eq!(guids(&by(WhichUpdates::All, None, Some("PC-2"))), ["live"]);
    assert_eq!(
        guids(&by(WhichUpdates::Live, Some("u"), Some("PC-1"))),
        Vec::<String>::new()
    );
    assert_eq!(
        guids(&by(
            WhichUpdates::In(UpdateState::Cancelled),
            Some("u"),
            None
        ))
        .len(),
        5
    );
    assert!(guids(&by(WhichUpdates::In(UpdateState::Committed), None, None)).is_empty());
    let other_disk = UpdateQuery {
        disk_id: Some("elsewhere".into()),
        ..UpdateQuery::all()
    };
    assert!(guids(&other_disk).is_empty());
    let row = &meta.updates(&UpdateQuery::live()).unwrap()[0];
    assert!(row.started_at > 0 && row.changed_at >= row.started_at);
}

fn deleting_and_pruning(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    meta.start_update("d", "v1", &session, "g", &Hash::of(b"s"))
        .unwrap();
    assert!(matches!(
        meta.delete_disk("d"),
        Err(MetaError::DiskBusy { .. })
    ));
    assert!(
        matches!(
            meta.delete_version("d", "v1"),
            Err(MetaError::VersionIsLatest(_) | MetaError::VersionIsBase { .. })
        ),
        "the latest and the base of a live update stay"
    );
    meta.set_state("g", UpdateState::Uploading, None).unwrap();
    let open = meta.open_session("g").unwrap();
    meta.commit("g", open.session, &version("v2", Some("v1")), || {
        Ok::<_, MetaError>(())
    })
    .unwrap();
    meta.delete_version("d", "v1").unwrap();
    assert!(!meta.version_exists("d", "v1").unwrap());
    assert!(matches!(
        meta.delete_version("d", "v1"),
        Err(MetaError::UnknownVersion(_))
    ));
    // Ended updates go once they ended before the bound; live ones stay.
    meta.start_update("d", "v2", &session, "live", &Hash::of(b"s"))
        .unwrap();
    assert_eq!(meta.prune(now() - 3600).unwrap(), 0, "ended just now");
    assert_eq!(meta.prune(now() + 3600).unwrap(), 1, "the committed one");
    assert!(meta.update("live").is_ok());
    assert!(matches!(meta.update("g"), Err(MetaError::UnknownUpdate(_))));
    meta.set_state("live", UpdateState::Cancelled, None)
        .unwrap();
    assert_eq!(meta.delete_disk("d").unwrap(), 1, "one version left");
    assert!(matches!(meta.disk("d"), Err(MetaError::UnknownDisk(_))));
}

/// An error of the caller's own, for the typed transaction helpers.
#[derive(Debug)]
enum Failure {
    Meta(MetaError),
    Own,
}

impl From<MetaError> for Failure {
    fn from(e: MetaError) -> Self {
        Self::Meta(e)
    }
}

fn upkeep_and_the_write_lock(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    assert_eq!(meta.last_upkeep("gc").unwrap(), None);
    meta.record_upkeep("gc", "3 chunks deleted").unwrap();
    let (at, outcome) = meta.last_upkeep("gc").unwrap().unwrap();
    assert_eq!(outcome, "3 chunks deleted");
    assert!((at - now()).abs() < 60);

    let locked: Result<i64, Failure> = meta.exclusive(|db| Ok(db.newest_seq()?));
    let seq = match locked {
        Ok(seq) => seq,
        Err(e) => panic!("{e:?}"),
    };
    assert!(seq > 0);
    let since: Vec<String> = meta
        .versions_since(0)
        .unwrap()
        .into_iter()
        .map(|(_, v)| v.id)
        .collect();
    assert_eq!(since, ["v1"]);
    assert!(meta.versions_since(seq).unwrap().is_empty());
    let failed: Result<(), Failure> = meta.exclusive(|_| Err(Failure::Own));
    assert!(
        matches!(failed, Err(Failure::Own)),
        "the work's error as it was"
    );

    // A failing manifest write commits nothing, and its error comes back as it was.
    meta.start_update("d", "v1", &session, "g", &Hash::of(b"s"))
        .unwrap();
    meta.set_state("g", UpdateState::Uploading, None).unwrap();
    let open = meta.open_session("g").unwrap();
    let v2 = version("v2", Some("v1"));
    let failed = meta.commit("g", open.session, &v2, || Err(Failure::Own));
    assert!(matches!(failed, Err(Failure::Own)));
    assert_eq!(meta.update("g").unwrap().state, UpdateState::Uploading);
    assert_eq!(meta.versions("d").unwrap().len(), 1, "nothing committed");
    let stale = meta.commit("g", open.session + 1, &v2, || Ok::<_, Failure>(()));
    assert!(matches!(stale, Err(Failure::Meta(MetaError::TakenOver))));
    let held: Result<bool, Failure> =
        meta.exclusive(|db| Ok(db.version_exists("d", "v1")? && db.disk_exists("d")?));
    assert!(matches!(held, Ok(true)));
}

fn transfer_servers_and_leases(meta: &dyn Metadata) {
    let session = user_and_disk(meta);
    let report = |guid: &str, stored: u64| UploadReport {
        guid: guid.into(),
        session: 2,
        needed: 100,
        stored,
        on_wire: stored / 2,
        // The terminal's account travels whole, or not at all.
        job: stored.is_multiple_of(2).then_some(JobReport {
            percent: 42,
            total: 5_000_000_000,
            eta_secs: (stored > 2).then_some(75),
            rate: 12_000_000,
        }),
    };
    meta.transfer_alive("https://t1:30811", &[]).unwrap();
    meta.transfer_alive("https://t2:30811", &[]).unwrap();
    let three = [report("a", 1), report("b", 2), report("c", 3)];
    meta.transfer_alive("https://t1:30811", &three).unwrap();
    assert_eq!(meta.upload_reports(now() - 5).unwrap(), three);
    // A heartbeat replaces what its server reported before.
    meta.transfer_alive("https://t1:30811", &[report("b", 50), report("c", 3)])
        .unwrap();
    meta.transfer_alive(
        "https://t1:30811",
        &[report("a", 1), report("b", 60), report("c", 3)],
    )
    .unwrap();
    assert_eq!(meta.upload_reports(now() - 5).unwrap()[1], report("b", 60));
    assert!(
        meta.upload_reports(now() + 5).unwrap().is_empty(),
        "stale reports are not read"
    );
    meta.start_update("d", "v1", &session, "g", &Hash::of(b"s"))
        .unwrap();
    assert_eq!(meta.carrier("g").unwrap(), None);
    meta.set_carrier("g", "https://t2:30811").unwrap();
    assert_eq!(
        meta.carrier("g").unwrap().as_deref(),
        Some("https://t2:30811")
    );
    let servers = meta.transfer_servers().unwrap();
    let seen: Vec<(&str, u64, u64)> = servers
        .iter()
        .map(|t| (t.url.as_str(), t.uploads, t.carried))
        .collect();
    assert_eq!(
        seen,
        [("https://t1:30811", 3, 0), ("https://t2:30811", 0, 1)]
    );
    assert!(servers.iter().all(|t| t.seen_at >= t.started_at));
    // An ended update no longer counts against its carrier.
    meta.set_state("g", UpdateState::Cancelled, None).unwrap();
    assert_eq!(meta.transfer_servers().unwrap()[1].carried, 0);
    meta.transfer_gone("https://t1:30811").unwrap();
    assert_eq!(meta.transfer_servers().unwrap().len(), 1);
    assert!(
        meta.upload_reports(0).unwrap().is_empty(),
        "gone with their server"
    );

    // Imports share the store; gc holds it alone; an expired lease is gone.
    let later = now() + 60;
    assert!(meta.take_lease("import-1", false, later).unwrap());
    assert!(meta.take_lease("import-2", false, later).unwrap());
    assert!(!meta.take_lease("gc", true, later).unwrap());
    meta.drop_lease("import-1").unwrap();
    meta.drop_lease("import-2").unwrap();
    assert!(meta.take_lease("gc", true, later).unwrap());
    assert!(meta.take_lease("gc", true, later + 5).unwrap(), "renewed");
    assert!(!meta.take_lease("import-3", false, later).unwrap());
    meta.drop_lease("gc").unwrap();
    assert!(meta.take_lease("import-3", false, now() - 1).unwrap());
    assert!(
        meta.take_lease("gc", true, later).unwrap(),
        "an import's expired lease does not hold gc"
    );
}
