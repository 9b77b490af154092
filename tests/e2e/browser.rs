//! The browser client in real headless Chromium (chromedriver), found by
//! accessible names: the page served with its policy, sign-in, the wallet
//! (balance, a double-submitted send that moves money once, a refusal in
//! words, history), sign-out revoking the device, at a phone's width, with
//! no console error.

use serde_json::json;

use crate::support::browser::Browser;
use crate::support::{Db, Server};

const ALICE: &str = "+79161234567";
const BOB: &str = "+79167654321";

async fn the_wallet_page_signs_in_sends_once_and_explains_refusals(db: Db) {
    // Alice asks for a code on her phone, then again in the browser.
    let server =
        Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0", "--sign-in-code-resend-after-s", "0"])
            .await;
    let admin = server.bootstrap_admin();
    let bob = server.sign_in(BOB, "phone").await;
    let alice_phone = server.sign_in(ALICE, "phone").await;
    let body =
        json!({"account_id": alice_phone.account_id, "amount": "1000.00", "currency": "RUB", "external_ref": "web-1"});
    let (status, _, _) = server.post_keyed("/admin/v1/deposits", &admin, "web-deposit-1", body).await;
    assert_eq!(status, 201);

    // The page and its files carry the policy and revalidate.
    let page = server.http.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"), "{policy}");
    let etag = page.headers()["etag"].clone();
    let again = server.http.get(format!("{}/", server.url)).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(again.status(), 304);

    let browser = Browser::start(360).await;
    browser.open(&server.url).await;
    // With the keyboard alone: Enter submits each form.
    browser.type_into("Phone number", "+7 916 123-45-67\u{E007}").await;
    browser.named("Code").await;
    assert_eq!(server.hook.messages(ALICE).len(), 2, "one code for the phone, one for the browser");
    browser.type_into("Code", &format!("{}\u{E007}", server.hook.last_code(ALICE))).await;
    browser.wait_for_text("Balance", "1000.00 RUB").await;

    // Submitted twice at once (a double click): the money moves once.
    browser.type_into("Recipient phone number", BOB).await;
    browser.type_into("Amount", "150.00").await;
    // The fee shows before sending.
    let quoted = browser.wait_for_script("return document.getElementById('quote').textContent", "Fee 0.00 RUB").await;
    assert_eq!(quoted, "Fee 0.00 RUB · you pay 150.00 RUB");
    browser
        .eval("const form = document.getElementById('send-form'); form.requestSubmit(); form.requestSubmit();")
        .await;
    browser.wait_for_text("Balance", "850.00 RUB").await;
    let (_, wallet) = server.get("/v1/wallet", Some(&bob.access_token)).await;
    assert_eq!(wallet["balance"], "150.00", "one transfer reached Bob");
    let items = browser.eval("return document.querySelectorAll('#history li').length").await;
    assert_eq!(items, json!(2), "the transfer and the deposit");
    let history = browser.eval("return document.getElementById('history').textContent").await;
    assert!(history.as_str().unwrap().contains("150.00 RUB"), "{history}");

    // A refusal in words, changing nothing.
    browser.type_into("Amount", "100000.01").await;
    browser.click("Send money").await;
    let said = browser
        .wait_for_script("return document.getElementById('send-status').textContent", "more than one transfer")
        .await;
    assert_eq!(
        said,
        "That is more than one transfer may carry in your region. One transfer may carry at most 100000.00 RUB."
    );
    assert_eq!(browser.text_of("Balance").await, "850.00 RUB");

    // A phone's width, and nothing the page logged as an error.
    let overflow = browser.eval("return document.documentElement.scrollWidth").await;
    let wide = browser
        .eval(
            "return [window.innerWidth, ...[...document.querySelectorAll('body *')]\
               .filter(e => e.getBoundingClientRect().right > window.innerWidth)\
               .map(e => e.tagName + '#' + e.id + ' ' + Math.round(e.getBoundingClientRect().right))]",
        )
        .await;
    assert_eq!(wide[0], 360, "the viewport");
    assert!(overflow.as_u64().unwrap() <= 360, "the page is {overflow} px wide at 360: {wide}");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.screenshot(&format!("wallet-{db:?}").to_lowercase()).await;

    // Signing out revokes this browser's device session.
    browser.click("Sign out").await;
    browser.named("Phone number").await;
    let (_, devices) = server.get("/v1/me/devices", Some(&alice_phone.access_token)).await;
    let names: Vec<&str> = devices["items"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["phone"], "the browser's session is gone");
    browser.close().await;
    server.finish().await;
}

/// The page derives the same SAS as the softphone (the Rust side) from the
/// same call, fingerprints and nonces, with the table the server serves
/// from the protocol's own file, and checks commitments the same way.
async fn the_page_computes_the_softphones_sas(db: Db) {
    use courier_protocol::sas::{Sas, SasInput, commitment, fingerprint_in_sdp};
    let server = Server::start(db).await;
    let browser = Browser::start(360).await;
    browser.open(&server.url).await;
    let sdp = "v=0\r\na=fingerprint:SHA-256 ab:cd:ef:01\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD:EF:01\r\n";
    for round in 0u8..8 {
        let caller_nonce = [round.wrapping_mul(31); 32];
        let callee_nonce = [round.wrapping_add(200); 32];
        let call_id = format!("0193a0b1-c2d3-7e4f-8a9b-{round:012x}");
        let caller_fingerprint = format!("sha-256 {}", ["0A"; 32].join(":"));
        let callee_fingerprint = format!("sha-256 {:02X}:{}", round, ["FF"; 31].join(":"));
        let expected = Sas::compute(&SasInput {
            call_id: &call_id,
            caller_fingerprint: &caller_fingerprint,
            callee_fingerprint: &callee_fingerprint,
            caller_nonce,
            callee_nonce,
        });
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let script = format!(
            "const done = arguments[arguments.length - 1];
             import('/sas.js').then(async (m) => {{
               const shown = await m.sas({{ callId: '{call_id}', callerFingerprint: '{caller_fingerprint}',
                 calleeFingerprint: '{callee_fingerprint}', callerNonce: m.fromHex('{}'), calleeNonce: m.fromHex('{}') }});
               done({{ symbols: shown.map((e) => e.symbol).join(' '), names: shown.map((e) => e.name),
                       commitment: await m.commitment(m.fromHex('{}')),
                       fingerprint: m.fingerprintInSdp({sdp:?}) }});
             }}).catch((error) => done({{ error: String(error) }}));",
            hex(&caller_nonce),
            hex(&callee_nonce),
            hex(&caller_nonce),
        );
        let got = browser.eval_async(&script).await;
        assert_eq!(got["symbols"], expected.symbols(), "round {round}: {got}");
        assert_eq!(got["names"], json!(expected.names()));
        assert_eq!(got["commitment"], commitment(&caller_nonce));
        assert_eq!(got["fingerprint"], json!(fingerprint_in_sdp(sdp)));
    }
    assert_eq!(fingerprint_in_sdp(sdp).as_deref(), Some("sha-256 AB:CD:EF:01"));
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    server.finish().await;
}

/// A WAV of a `hz` tone (16-bit PCM at 48 kHz, 2 s; Chromium loops it).
pub(crate) fn tone_wav(dir: &std::path::Path, hz: f32) -> std::path::PathBuf {
    let path = dir.join(format!("tone-{hz}.wav"));
    let samples: Vec<i16> =
        (0..96_000).map(|n| ((n as f32 * hz * std::f32::consts::TAU / 48_000.0).sin() * 12_000.0) as i16).collect();
    crate::calls_media::write_wav(&path, &[&samples]);
    path
}

pub(crate) async fn sign_in_page(browser: &Browser, server: &Server, phone: &str) {
    sign_in_page_at(browser, server, &server.url, phone).await;
}

/// Signs in on the page as served at `url` (the server, or a proxy in front of it).
async fn sign_in_page_at(browser: &Browser, server: &Server, url: &str, phone: &str) {
    browser.open(url).await;
    browser.type_into("Phone number", phone).await;
    browser.click("Send code").await;
    browser.named("Code").await;
    browser.type_into("Code", &server.hook.last_code(phone)).await;
    browser.click("Sign in").await;
    browser.named("Number to call").await;
}

/// The loudest frequency of what the page hears from the other side.
pub(crate) async fn heard_hz(browser: &Browser) -> f64 {
    heard(browser).await.0
}

/// The loudest frequency the page hears from the other side, and its level (dB).
async fn heard(browser: &Browser) -> (f64, f64) {
    let script = "const done = arguments[arguments.length - 1];
        const context = new AudioContext();
        context.resume().then(() => {
          const source = context.createMediaStreamSource(document.getElementById('remote-audio').srcObject);
          const analyser = context.createAnalyser();
          analyser.fftSize = 8192;
          source.connect(analyser);
          setTimeout(() => {
            const bins = new Float32Array(analyser.frequencyBinCount);
            analyser.getFloatFrequencyData(bins);
            let loudest = 1;
            for (let i = 1; i < bins.length; i++) if (bins[i] > bins[loudest]) loudest = i;
            done([loudest * context.sampleRate / analyser.fftSize, Math.max(bins[loudest], -200)]);
            context.close();
          }, 1500);
        });";
    let value = browser.eval_async(script).await;
    (value[0].as_f64().unwrap(), value[1].as_f64().unwrap())
}

/// Two Chromium processes, each playing its own tone, call each other
/// through `courier serve`: each hears the other's tone, both show the same
/// security code, the connection is direct, and a hang-up reaches the other.
async fn two_browsers_call_each_other_with_the_same_security_code(db: Db) {
    let server =
        Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0", "--sign-in-code-resend-after-s", "0"])
            .await;
    let admin = server.bootstrap_admin();
    let (alice_api, bob_api) = (server.sign_in(ALICE, "phone").await, server.sign_in(BOB, "phone").await);
    let body =
        json!({"account_id": alice_api.account_id, "amount": "100.00", "currency": "RUB", "external_ref": "web-2"});
    let (status, _, _) = server.post_keyed("/admin/v1/deposits", &admin, "web-deposit-2", body).await;
    assert_eq!(status, 201);
    let alice = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    let bob = Browser::with_microphone(360, &tone_wav(server.dir.path(), 1_000.0)).await;
    sign_in_page(&alice, &server, ALICE).await;
    sign_in_page(&bob, &server, BOB).await;

    alice.type_into("Number to call", BOB).await;
    alice.click("Call").await;
    bob.named("Answer").await;
    let ringing = bob.eval("return document.getElementById('incoming').dataset.ringing").await;
    assert_eq!(ringing, "true", "an incoming call rings");
    bob.click("Answer").await;
    for browser in [&alice, &bob] {
        browser.wait_for_text("Connection", "Direct").await;
        browser.wait_for_text("Security code", " · ").await;
    }
    assert_eq!(bob.eval("return document.getElementById('incoming').dataset.ringing").await, "false");
    let code = "return document.getElementById('sas').dataset.symbols";
    let (alices, bobs) = (alice.eval(code).await, bob.eval(code).await);
    assert_eq!(alices, bobs, "both sides show the same security code");
    assert_eq!(alices.as_str().unwrap().split(' ').count(), 4);

    let ((alice_hears, loud), bob_hears) = (heard(&alice).await, heard_hz(&bob).await);
    assert!((alice_hears - 1_000.0).abs() < 30.0, "Alice hears {alice_hears} Hz, not Bob's 1000 Hz");
    assert!((bob_hears - 440.0).abs() < 30.0, "Bob hears {bob_hears} Hz, not Alice's 440 Hz");
    alice.screenshot(&format!("call-{db:?}").to_lowercase()).await;

    // Muted, Bob's tone no longer reaches Alice; unmuted, it does again.
    bob.click("Mute").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, muted) = heard(&alice).await;
    assert!(muted < loud - 30.0, "Alice still hears Bob at {muted} dB (unmuted: {loud} dB)");
    bob.click("Mute").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (again, _) = heard(&alice).await;
    assert!((again - 1_000.0).abs() < 30.0, "after unmuting Alice hears {again} Hz");

    // The call's figures show while it lasts.
    for browser in [&alice, &bob] {
        browser.wait_for_text("Call quality", "jitter").await;
    }
    // Paying the person on the call, from the call screen; Bob could too
    // (Alice is in his region, known to his page by her account id).
    assert_eq!(bob.eval("return document.getElementById('pay-peer').hidden").await, false);
    alice.click("Send money to the person on this call").await;
    alice.type_into("Amount", "10.00").await;
    alice.click("Send money").await;
    alice.wait_for_text("Balance", "90.00 RUB").await;
    let (_, wallet) = server.get("/v1/wallet", Some(&bob_api.access_token)).await;
    assert_eq!(wallet["balance"], "10.00");

    alice.click("Hang up").await;
    bob.wait_for_script("return document.getElementById('call-message').textContent", "hung up").await;
    // The ended call can be rated; its figures went to its record.
    alice.type_into("Rating (1 to 5)", "4").await;
    alice.click("Echo").await;
    alice.click("Rate the call").await;
    alice.wait_for_script("return document.getElementById('call-message').textContent", "Thank you").await;
    let (_, history) = server.get("/v1/calls/history", Some(&alice_api.access_token)).await;
    let record = &history["items"][0];
    assert_eq!(
        (&record["direction"], &record["rating"], &record["problems"]),
        (&json!("outgoing"), &json!(4), &json!(["echo"]))
    );
    assert!(["host", "srflx", "prflx"].contains(&record["stats"]["candidate_type"].as_str().unwrap_or("")), "{record}");
    assert!(record["stats"]["setup_ms"].as_f64().is_some(), "{record}");

    // A call hung up before it is answered shows as missed on the other side.
    alice.type_into("Number to call", BOB).await;
    alice.click("Call").await;
    bob.named("Answer").await;
    alice.click("Hang up").await;
    bob.wait_for_script("return document.querySelector('#call-history li').dataset.direction", "missed").await;
    // Declined: the caller is told.
    alice.type_into("Number to call", BOB).await;
    alice.click("Call").await;
    bob.click("Decline").await;
    alice.wait_for_script("return document.getElementById('call-message').textContent", "declined").await;

    for browser in [&alice, &bob] {
        assert_eq!(browser.console_errors().await, Vec::<String>::new());
    }
    alice.close().await;
    bob.close().await;
    server.finish().await;
}

/// The page calls the softphone and the softphone calls the page, then
/// calls it again once the page's account has `p2p: never` (the softphone
/// learns from the invite's ack that the call is relay-only and takes its
/// offer over with a relay-only peer connection): each hears the other's
/// tone (the softphone's recording checked with the Goertzel filter, the
/// page's audio with an analyser), and the page shows the softphone's SAS.
async fn the_page_and_the_softphone_call_each_other(db: Db) {
    use crate::calls_media::Softphone;
    // In Brazil: the page offers no "Send money" on a call with them.
    const PHONE: &str = "+5511912340002";
    // The softphone would end the call after this long; the page hangs up
    // first, once it has checked what it hears.
    const AT_MOST_S: f64 = 60.0;
    let args = ["--sign-in-codes-per-addr-per-hour-max", "0", "--sign-in-code-resend-after-s", "0"];
    let server = Server::start_with(db, &args).await;
    let browser = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    sign_in_page(&browser, &server, ALICE).await;
    let softphone = Softphone::login(&server.url, &server, PHONE).await;

    for (page_calls, page_hides) in [(true, false), (false, false), (false, true)] {
        if page_hides {
            let alice = server.sign_in(ALICE, "phone").await;
            let change = Some(json!({"p2p": "never"}));
            let (status, settings) =
                server.call(reqwest::Method::PATCH, "/v1/me/settings", Some(&alice.access_token), change).await;
            assert_eq!((status, &settings["p2p"]), (200, &json!("never")));
        }
        let running = if page_calls {
            let answering = softphone.spawn_for(&server.url, &["answer", "--auto", "--wait-s", "60"], 880, AT_MOST_S);
            answering.wait_for("waiting for a call").await;
            browser.type_into("Number to call", PHONE).await;
            browser.click("Call").await;
            answering
        } else {
            let dialing = softphone.spawn_for(&server.url, &["dial", ALICE], 880, AT_MOST_S);
            browser.click("Answer").await;
            dialing
        };
        // Setting up a call on a loaded two-core machine can take a while,
        // and then ICE may settle on the relay pair (the policy is "all").
        page_call_up(&browser, &running, &format!("page calls: {page_calls}")).await;
        let kind = browser.eval("return document.getElementById('connection').dataset.kind").await;
        if page_hides {
            assert_eq!(kind, "relay");
        } else {
            assert!(kind == "direct" || kind == "relay", "{kind}");
        }
        // By the time the figures show, the page has asked whether it can pay them.
        browser.wait_for_text("Call quality", "jitter").await;
        assert_eq!(browser.eval("return document.getElementById('pay-peer').hidden").await, true);
        let report = page_and_softphone_heard_each_other(&browser, &softphone, running).await;
        if page_hides {
            assert_eq!(report["ice_policy"], "relay", "{report}");
            let pair = (&report["candidate_type"], &report["remote_candidate_type"]);
            assert_eq!(pair, (&json!("relay"), &json!("relay")), "{report}");
        }
    }
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    server.finish().await;
}

/// Waits until the page's call is up; else fails with where the page is,
/// its console and what the softphone printed.
async fn page_call_up(browser: &Browser, softphone: &crate::calls_media::Running, case: &str) {
    let up = "const c = document.getElementById('connection'); return c.dataset.kind ? 'up' : \
              [document.getElementById('call-state').textContent, c.dataset.state, c.textContent].join(' / ')";
    if let Err(failed) = browser.try_wait_for_script(up, "up").await {
        let errors = browser.console_errors().await;
        panic!("{failed} ({case}); the page's console: {errors:?}; the softphone printed:\n{}", softphone.printed());
    }
}

/// The page (playing 440 Hz) and the softphone's call (playing 880 Hz) hear
/// each other and show the same SAS; the page hangs up. The softphone's report.
async fn page_and_softphone_heard_each_other(
    browser: &Browser,
    softphone: &crate::calls_media::Softphone,
    running: crate::calls_media::Running,
) -> serde_json::Value {
    browser.wait_for_text("Security code", " · ").await;
    let heard = heard_hz(browser).await;
    // Long enough for the softphone's recording to hold the page's tone.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    browser.click("Hang up").await;
    let report = running.report().await;
    let shown = browser.eval("return document.getElementById('sas').dataset.symbols").await;
    assert_eq!(shown, report["sas"], "the page shows the softphone's SAS: {report}");
    assert!(report["sas_warning"].is_null(), "{report}");
    assert!((heard - 880.0).abs() < 30.0, "the page heard {heard} Hz, not the softphone's 880 Hz");
    let at_softphone = crate::calls_media::seconds_of_tone(&softphone.recording(), 440.0);
    assert!(at_softphone >= 2.0, "the softphone heard the page for only {at_softphone} s: {report}");
    report
}

/// The server may tell the caller that the call was answered before it
/// acknowledges the invite (the invite's ack waits for its record, the
/// callee's answer need not): the page takes the answer once its own offer
/// is set, and the call connects. The proxy holds the invite's ack until
/// the `answered` event has gone to the page.
async fn the_page_takes_an_answer_that_comes_before_its_invites_ack(db: Db) {
    use crate::calls_media::Softphone;
    use crate::support::proxy::{Proxy, Reorder};
    const PHONE: &str = "+5511912340003";
    let server = Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let reorder = Reorder { answer_to: "invite", until: "answered" };
    let proxy = Proxy::start_with(&server.url, None, Some(reorder)).await;
    let browser = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    sign_in_page_at(&browser, &server, &proxy.url, ALICE).await;
    let softphone = Softphone::login(&server.url, &server, PHONE).await;
    let answering = softphone.spawn_for(&server.url, &["answer", "--auto", "--wait-s", "60"], 880, 60.0);
    answering.wait_for("waiting for a call").await;
    browser.type_into("Number to call", PHONE).await;
    browser.click("Call").await;
    page_call_up(&browser, &answering, "the answer before the ack").await;
    assert_eq!(proxy.reordered(), 1, "the invite's ack reached the page after the answer");
    page_and_softphone_heard_each_other(&browser, &softphone, answering).await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    server.finish().await;
}

/// With `p2p: never` on the callee's side, both pages gather and pair
/// relay candidates only: the selected pair is relay at both ends, and the
/// call carries audio through the embedded relay.
async fn a_relay_only_call_between_pages_goes_through_the_relay(db: Db) {
    relay_only_call_between_pages(db, BOB, &[]).await;
    relay_only_call_between_pages(db, ALICE, &[]).await;
}

/// The same through coturn (`--turn external`), the production relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_call_between_pages_goes_through_coturn() {
    use crate::support::coturn::Coturn;
    const SECRET: &str = "a-coturn-secret-for-the-page-test";
    let coturn = Coturn::start(SECRET, &["allow-loopback-peers", "allowed-peer-ip=127.0.0.1"]);
    coturn.ready().await;
    let turn_url = format!("turn:{}?transport=udp", coturn.addr);
    relay_only_call_between_pages(
        Db::Sqlite,
        BOB,
        &["--turn", "external", "--turn-secret", SECRET, "--turn-urls", &turn_url],
    )
    .await;
}

/// Alice calls Bob; `hidden` (either of them) has `p2p: never`.
async fn relay_only_call_between_pages(db: Db, hidden: &str, extra: &[&str]) {
    let mut args = vec!["--sign-in-codes-per-addr-per-hour-max", "0", "--sign-in-code-resend-after-s", "0"];
    args.extend_from_slice(extra);
    let server = Server::start_with(db, &args).await;
    let hiding = server.sign_in(hidden, "phone").await;
    let (status, settings) = server
        .call(reqwest::Method::PATCH, "/v1/me/settings", Some(&hiding.access_token), Some(json!({"p2p": "never"})))
        .await;
    assert_eq!((status, &settings["p2p"]), (200, &json!("never")));
    let alice = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    let bob = Browser::with_microphone(360, &tone_wav(server.dir.path(), 1_000.0)).await;
    sign_in_page(&alice, &server, ALICE).await;
    sign_in_page(&bob, &server, BOB).await;
    alice.type_into("Number to call", BOB).await;
    alice.click("Call").await;
    bob.click("Answer").await;
    for browser in [&alice, &bob] {
        browser.wait_for_text("Connection", "Relayed").await;
        let pair =
            browser.eval("const c = document.getElementById('connection').dataset; return [c.local, c.remote]").await;
        assert_eq!(pair, json!(["relay", "relay"]), "the selected pair is relay at both ends");
    }
    let (alice_hears, bob_hears) = (heard_hz(&alice).await, heard_hz(&bob).await);
    assert!((alice_hears - 1_000.0).abs() < 30.0, "Alice hears {alice_hears} Hz through the relay");
    assert!((bob_hears - 440.0).abs() < 30.0, "Bob hears {bob_hears} Hz through the relay");
    alice.click("Hang up").await;
    alice.close().await;
    bob.close().await;
    server.finish().await;
}

/// A signaling server that rewrites the page's answer (its DTLS
/// fingerprint) cannot make the SAS the softphone shows match the page's.
async fn a_man_in_the_middle_shows_in_the_pages_security_code(db: Db) {
    use crate::calls_media::Softphone;
    use crate::support::proxy::{Proxy, Rewrite};
    const PHONE: &str = "+79161140002";
    let forged =
        "sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    let rewrite: Rewrite = std::sync::Arc::new(move |mut message: serde_json::Value| {
        if message["type"] == "answer" {
            let sdp = message["sdp"].as_str().unwrap_or_default();
            let lines: Vec<String> = sdp
                .split("\r\n")
                .map(|line| {
                    if line.starts_with("a=fingerprint:") { format!("a=fingerprint:{forged}") } else { line.to_owned() }
                })
                .collect();
            message["sdp"] = json!(lines.join("\r\n"));
        }
        message
    });
    let server = Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let proxy = Proxy::start(&server.url, Some(rewrite)).await;
    let browser = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    // The page is served, and signals, through the compromised server.
    sign_in_page_at(&browser, &server, &proxy.url, BOB).await;
    let softphone = Softphone::login(&server.url, &server, PHONE).await;
    let dialing = softphone.dial(&server.url, BOB, 880);
    browser.click("Answer").await;
    // The caller's DTLS check fails against the forged fingerprint, so the
    // call ends without media; the code shown until then stays recorded.
    let shown = browser.wait_for_script("return document.getElementById('sas').dataset.symbols || ''", " ").await;
    let report = dialing.report().await;
    assert!(proxy.sent().iter().any(|m| m["type"] == "answer" && m["sdp"].as_str().unwrap().contains(forged)));
    assert!(report["sas"].is_string(), "{report}");
    assert_ne!(json!(shown), report["sas"], "the forged fingerprint is in the softphone's SAS, not the page's");
    browser.close().await;
    server.finish().await;
}

/// "Who can call me" and the block list, set in the page, are what the
/// server honours: the caller is told in words, and undoing either lets
/// the call ring again.
async fn call_settings_and_blocks_set_in_the_page_are_honoured(db: Db) {
    let server =
        Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0", "--sign-in-code-resend-after-s", "0"])
            .await;
    let alice_id = server.sign_in(ALICE, "phone").await.account_id;
    let alice = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    let bob = Browser::start(360).await;
    sign_in_page(&alice, &server, ALICE).await;
    sign_in_page(&bob, &server, BOB).await;
    let message = "return document.getElementById('call-message').textContent";
    let refused = "not taking calls from you";
    let rings = || async {
        alice.type_into("Number to call", BOB).await;
        alice.click("Call").await;
        bob.click("Decline").await;
        alice.wait_for_script(message, "declined").await;
    };
    let is_refused = || async {
        alice.type_into("Number to call", BOB).await;
        alice.click("Call").await;
        alice.wait_for_script(message, refused).await;
    };

    bob.choose("Who can call me", "Nobody").await;
    bob.click("Save settings").await;
    bob.wait_for_script(message, "Settings saved").await;
    is_refused().await;
    bob.choose("Who can call me", "Everybody").await;
    bob.click("Save settings").await;
    rings().await;

    bob.click(&format!("Block {alice_id}")).await;
    bob.named(&format!("Unblock {alice_id}")).await;
    is_refused().await;
    bob.click(&format!("Unblock {alice_id}")).await;
    bob.wait_for_script("return document.getElementById('blocked').children.length + ''", "0").await;
    rings().await;
    for browser in [&alice, &bob] {
        assert_eq!(browser.console_errors().await, Vec::<String>::new());
    }
    alice.close().await;
    bob.close().await;
    server.finish().await;
}

/// Mid-call both signaling sockets drop (as on a network change): the
/// pages reconnect, `resume`, the caller restarts ICE with `negotiate`, the
/// callee answers it, and the call goes on with its audio.
async fn a_call_survives_the_signaling_socket_dropping(db: Db) {
    use crate::support::proxy::Proxy;
    let server = Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let proxy = Proxy::start(&server.url, None).await;
    let alice = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    let bob = Browser::with_microphone(360, &tone_wav(server.dir.path(), 1_000.0)).await;
    for (browser, phone) in [(&alice, ALICE), (&bob, BOB)] {
        sign_in_page_at(browser, &server, &proxy.url, phone).await;
    }
    alice.type_into("Number to call", BOB).await;
    alice.click("Call").await;
    bob.click("Answer").await;
    for browser in [&alice, &bob] {
        browser.wait_for_text("Connection", "Direct").await;
    }
    proxy.cut();
    alice.wait_for_script("return document.getElementById('connection').dataset.restarts || ''", "1").await;
    let sent = proxy.sent();
    let resumed = sent.iter().filter(|m| m["type"] == "resume").count();
    assert_eq!(resumed, 2, "both pages resumed the call");
    assert!(sent.iter().any(|m| m["type"] == "negotiate" && m["kind"] == "offer"), "the caller restarted ICE");
    assert!(sent.iter().any(|m| m["type"] == "negotiate" && m["kind"] == "answer"), "the callee answered it");
    for browser in [&alice, &bob] {
        browser.wait_for_text("Connection", "Direct").await;
    }
    let (alice_hears, bob_hears) = (heard_hz(&alice).await, heard_hz(&bob).await);
    assert!((alice_hears - 1_000.0).abs() < 30.0, "Alice hears {alice_hears} Hz after the restart");
    assert!((bob_hears - 440.0).abs() < 30.0, "Bob hears {bob_hears} Hz after the restart");
    alice.click("Hang up").await;
    bob.wait_for_script("return document.getElementById('call-message').textContent", "hung up").await;
    alice.close().await;
    bob.close().await;
    server.finish().await;
}

/// A caller whose revealed nonce is not the one it committed to (a server
/// in the middle swapping it) makes the page warn instead of showing a
/// code to compare.
async fn a_reveal_that_breaks_its_commitment_shows_a_warning(db: Db) {
    use crate::calls_media::Softphone;
    use crate::support::proxy::{Proxy, Rewrite};
    const PHONE: &str = "+79161140002";
    let rewrite: Rewrite = std::sync::Arc::new(|mut message: serde_json::Value| {
        if message["type"] == "sas_reveal" {
            message["nonce"] = json!("00".repeat(32));
        }
        message
    });
    let server = Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let proxy = Proxy::start(&server.url, Some(rewrite)).await;
    let browser = Browser::with_microphone(360, &tone_wav(server.dir.path(), 440.0)).await;
    sign_in_page(&browser, &server, BOB).await;
    // The softphone signals through the server that swaps its reveal.
    let softphone = Softphone::login(&proxy.url, &server, PHONE).await;
    let dialing = softphone.dial(&proxy.url, BOB, 880);
    browser.click("Answer").await;
    let warned = browser.wait_for_text("Security code", "Warning").await;
    assert!(warned.contains("cannot be trusted"), "{warned}");
    assert!(proxy.sent().iter().any(|m| m["type"] == "sas_reveal"));
    browser.click("Hang up").await;
    dialing.report().await;
    browser.close().await;
    server.finish().await;
}

on_both_databases!(
    a_reveal_that_breaks_its_commitment_shows_a_warning,
    a_call_survives_the_signaling_socket_dropping,
    call_settings_and_blocks_set_in_the_page_are_honoured,
    a_relay_only_call_between_pages_goes_through_the_relay,
    a_man_in_the_middle_shows_in_the_pages_security_code,
    the_page_and_the_softphone_call_each_other,
    the_page_takes_an_answer_that_comes_before_its_invites_ack,
    the_wallet_page_signs_in_sends_once_and_explains_refusals,
    the_page_computes_the_softphones_sas,
    two_browsers_call_each_other_with_the_same_security_code,
);
