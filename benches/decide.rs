//! The decision a check makes on an authorization the workspace actor already holds (issue
//! 10's "check decision on a cached authorization"): `allowly_decide::decide`, the pure function
//! the actor calls once it has the authorization in its cache, with a grant and a workspace's
//! scope rules of realistic size. Baseline: one SHA-256 of 512 bytes, about a check receipt's
//! canonical body: the least any receipt costs (its leaf hash), so the ratio says how much of a
//! check's CPU the decision itself can be.

use std::collections::BTreeMap;
use std::hint::black_box;

use allowly_benches::{print_ratios, Ratio};
use allowly_decide::{decide, Ask, Grant, Rule, Verdict};
use criterion::Criterion;
use sha2::{Digest, Sha256};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn benches(c: &mut Criterion) {
    // A grant as an agent platform would record it: a handful of scopes, two of them patterns,
    // and resource constraints; a workspace with a dozen scope rules.
    let scopes =
        strings(&["files.read", "files.write", "calendar.*", "mail.send", "crm.contacts.*", "tickets.comment"]);
    let resources = strings(&["doc:*", "folder:team/*", "ticket:4711"]);
    let grant = Grant { scopes: &scopes, resources: &resources, expires_at_ms: Some(u64::MAX / 2), revoked: false };
    let mut rules = BTreeMap::new();
    for (pattern, rule) in [
        ("payments.*", Rule::Escalate),
        ("files.delete", Rule::Escalate),
        ("admin.*", Rule::Escalate),
        ("crm.contacts.export", Rule::Escalate),
        ("mail.send", Rule::Confirm),
        ("calendar.delete", Rule::Confirm),
        ("files.share", Rule::Confirm),
        ("tickets.close", Rule::Confirm),
        ("repo.push", Rule::Confirm),
        ("repo.*", Rule::Escalate),
        ("billing.*", Rule::Escalate),
        ("users.invite", Rule::Confirm),
    ] {
        rules.insert(pattern.to_owned(), rule);
    }
    let read = strings(&["files.read"]);
    let send = strings(&["mail.send"]);
    let now = 1_796_000_000_000;
    let allow = Ask { scopes: &read, resource: Some("doc:1"), now_ms: now };
    let confirm = Ask { scopes: &send, resource: Some("folder:team/q3"), now_ms: now };
    assert_eq!(decide(grant, allow, &rules).0, Verdict::Allow);
    assert_eq!(decide(grant, confirm, &rules).0, Verdict::Confirm);

    let mut g = c.benchmark_group("decide");
    g.bench_function("cached_authorization_allow", |b| b.iter(|| decide(black_box(grant), black_box(allow), &rules)));
    g.bench_function("cached_authorization_confirm", |b| {
        b.iter(|| decide(black_box(grant), black_box(confirm), &rules))
    });
    let body = vec![b'x'; 512];
    g.bench_function("baseline_sha256_512_bytes", |b| b.iter(|| Sha256::digest(black_box(&body))));
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    print_ratios(
        "check decision",
        &[
            Ratio {
                label: "decide on a cached authorization (allow)",
                measured: "decide/cached_authorization_allow",
                per: 1.0,
                baseline: "decide/baseline_sha256_512_bytes",
            },
            Ratio {
                label: "decide on a cached authorization (confirm rule)",
                measured: "decide/cached_authorization_confirm",
                per: 1.0,
                baseline: "decide/baseline_sha256_512_bytes",
            },
        ],
    );
}
