// The storage seam's suite: what every backend must do, written once and typed over
// the backends (a SQLite file, a private in-memory SQLite database, a database on a
// real PostgreSQL server). Then what the seam promises the event loop: a failure is an
// error and not an exception, and a locked or unreachable database never holds up the
// caller's loop.
#include "core/money.hpp"
#include "storage/job_repository.hpp"
#include "storage/pg_repository.hpp"
#include "storage/sqlite_repository.hpp"
#include "tests/support/await.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/pg_server.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <filesystem>
#include <gtest/gtest.h>
#include <memory>

namespace {

using namespace klingd;
using core::job_state;
using core::milliseconds;
using core::time_point;
using std::chrono::seconds;
using test::await;

const time_point t0{milliseconds(1'800'000'000'000)};

core::job_spec spec(std::string id, std::string params = R"({"prompt":"p"})", int priority = 0) {
    return {std::move(id), "kling-o1", std::move(params), priority};
}

struct sqlite_file {
    static constexpr const char* name = "sqlite_file";
    static constexpr bool durable = true; // reopening sees what was written
    static std::unique_ptr<storage::job_repository> open(const test::temp_dir& dir) {
        return std::make_unique<storage::sqlite_repository>(dir / "klingd.db");
    }
};

struct sqlite_memory {
    static constexpr const char* name = "sqlite_memory";
    static constexpr bool durable = false;
    static std::unique_ptr<storage::job_repository> open(const test::temp_dir&) {
        return std::make_unique<storage::sqlite_repository>(":memory:");
    }
};

// A database of its own on the suite's PostgreSQL server; the same one when dir is
// opened again.
struct postgresql {
    static constexpr const char* name = "postgresql";
    static constexpr bool durable = true;
    static std::unique_ptr<storage::job_repository> open(const test::temp_dir& dir) {
        auto file = dir / "pg.conninfo";
        if (!std::filesystem::exists(file))
            test::write_file(file, test::fresh_pg_database());
        auto repo = std::make_unique<storage::pg_repository>(test::read_file(file));
        auto opened = await(repo->open());
        if (!opened)
            throw std::runtime_error(opened.error().message());
        return repo;
    }
};

template <class Backend>
class job_repository_test : public ::testing::Test {
protected:
    test::temp_dir dir{"repository"};
    std::unique_ptr<storage::job_repository> repo = Backend::open(dir);

    // The value of a call that must succeed.
    template <class T>
    T ok(storage::async_result<T> call) {
        auto r = await(std::move(call));
        EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
        if constexpr (!std::is_void_v<T>)
            return r ? std::move(*r) : T{};
    }
    std::vector<storage::insert_outcome> insert(std::vector<core::job_spec> specs,
                                                std::vector<std::string> sources = {}) {
        sources.resize(specs.size());
        return ok(repo->insert(std::move(specs), t0, std::move(sources)));
    }
    core::job get(const std::string& id) {
        auto j = ok(repo->get(id));
        EXPECT_TRUE(j) << id;
        return j.value_or(core::job{});
    }
    void save(const core::job& j, std::vector<storage::history_entry> h = {}) {
        ok(repo->save({{j, std::move(h)}}));
    }
};

using backends = ::testing::Types<sqlite_file, sqlite_memory, postgresql>;
struct backend_name {
    template <class T>
    static std::string GetName(int) {
        return T::name;
    }
};
TYPED_TEST_SUITE(job_repository_test, backends, backend_name);

TYPED_TEST(job_repository_test,
           insert_is_idempotent_for_the_same_content_and_refuses_other_content) {
    using storage::insert_outcome;
    EXPECT_EQ(this->insert({spec("a")}, {"spool:a.json"}),
              std::vector<insert_outcome>{insert_outcome::inserted});
    EXPECT_EQ(this->insert({spec("a")}, {"spool:a.json"}),
              std::vector<insert_outcome>{insert_outcome::same_content});
    EXPECT_EQ(this->insert({spec("a", R"({"prompt":"other"})")}),
              std::vector<insert_outcome>{insert_outcome::conflict});
    EXPECT_EQ(this->insert({spec("a", R"({"prompt":"p"})", 3)}),
              std::vector<insert_outcome>{insert_outcome::conflict});
    auto j = this->get("a");
    EXPECT_EQ(j.state, job_state::pending);
    EXPECT_EQ(j.params, R"({"prompt":"p"})");
    EXPECT_EQ(j.created_at, t0);
    auto h = this->ok(this->repo->history("a"));
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].note, "accepted from spool:a.json");
    EXPECT_EQ(h[0].state, "pending");
}

TYPED_TEST(job_repository_test, local_inputs_are_recorded_with_the_job_and_their_uploads_kept) {
    auto s = spec("in", R"({"image_urls":["file:///m/a.png","file:///m/b.png"],"prompt":"p"})");
    s.inputs = {{"file:///m/a.png", "/m/a.png", "aa11", 10, "image/png", std::nullopt},
                {"file:///m/b.png", "/m/b.png", "bb22", 20, "image/jpeg", std::nullopt}};
    EXPECT_EQ(this->insert({s}), std::vector{storage::insert_outcome::inserted});
    // The same job again records nothing twice.
    EXPECT_EQ(this->insert({s}), std::vector{storage::insert_outcome::same_content});
    auto in = this->ok(this->repo->inputs_of("in"));
    ASSERT_EQ(in.size(), 2u);
    EXPECT_EQ(in[0].url, "file:///m/a.png");
    EXPECT_EQ(in[0].sha256, "aa11");
    EXPECT_EQ(in[1].bytes, 20);
    EXPECT_EQ(in[1].mime, "image/jpeg");
    EXPECT_FALSE(in[0].hosted);
    EXPECT_TRUE(this->ok(this->repo->inputs_of("nobody")).empty());

    // An upload recorded: on the job's input, and by content for a day.
    this->ok(
        this->repo->record_upload("in", "file:///m/a.png", "aa11", "https://h/1.png", t0, true));
    in = this->ok(this->repo->inputs_of("in"));
    EXPECT_EQ(in[0].hosted.value_or(""), "https://h/1.png");
    EXPECT_FALSE(in[1].hosted);
    EXPECT_EQ(this->ok(this->repo->cached_upload("aa11", t0 - std::chrono::hours(24))).value_or(""),
              "https://h/1.png");
    EXPECT_FALSE(this->ok(this->repo->cached_upload("aa11", t0 + milliseconds(1))))
        << "uploaded before `since`: not reused";
    EXPECT_FALSE(this->ok(this->repo->cached_upload("bb22", t0 - std::chrono::hours(24))));
    // A reuse (fresh = false) sets the job's URL and leaves the cache's time alone.
    this->ok(this->repo->record_upload("in", "file:///m/b.png", "aa11", "https://h/1.png",
                                       t0 + std::chrono::hours(5), false));
    EXPECT_FALSE(this->ok(this->repo->cached_upload("aa11", t0 + milliseconds(1))));
    EXPECT_EQ(this->ok(this->repo->inputs_of("in"))[1].hosted.value_or(""), "https://h/1.png");
    if constexpr (TypeParam::durable) {
        this->repo = TypeParam::open(this->dir);
        EXPECT_EQ(this->ok(this->repo->inputs_of("in"))[0].hosted.value_or(""), "https://h/1.png");
    }
}

TYPED_TEST(job_repository_test, pruning_leaves_a_tombstone_that_keeps_each_id_taken) {
    using storage::insert_outcome;
    // "wide": multibyte text and a negative priority, hashed alike by every backend (in
    // SQL by PostgreSQL's prune, in C++ by the others and by insert).
    const std::string wide_params = "{\"prompt\":\"caf\u00e9 \u2615 \u65e5\u672c \\\"q\\\"\"}";
    this->insert({spec("old"), spec("recent"), spec("waiting"), spec("hooked"),
                  spec("wide", wide_params, -7)});
    auto finish = [&](const std::string& id, job_state st, time_point at,
                      std::optional<storage::hook_event> e = std::nullopt) {
        auto j = this->get(id);
        j.state = st;
        j.finished_at = at;
        j.updated_at = at;
        j.result = R"({"status":"COMPLETED"})";
        j.outputs = {"/out/" + id + "/output.png"};
        this->ok(this->repo->save({{j,
                                    {{at, std::string(core::to_string(st)), "done", {}}},
                                    std::nullopt,
                                    std::nullopt,
                                    e}}));
    };
    // Times are now's: PostgreSQL claims deliveries by its own clock.
    auto now = time_point(std::chrono::duration_cast<milliseconds>(
        std::chrono::system_clock::now().time_since_epoch()));
    auto day = std::chrono::hours(24);
    finish("old", job_state::completed, now - 40 * day);
    finish("wide", job_state::cancelled, now - 40 * day);
    finish("recent", job_state::failed, now - day);
    // A completion hook not yet delivered keeps its job.
    finish("hooked", job_state::completed, now - 40 * day,
           storage::hook_event{"job.completed", "completed", "{}", {"webhook"}, now - 40 * day});
    auto cut = now - 30 * day;
    auto stale = this->get("old"); // as a retry read it just before the prune
    EXPECT_EQ(this->ok(this->repo->prune(cut, now, 100)), 2);
    EXPECT_FALSE(this->ok(this->repo->get("old"))) << "a pruned job is gone from every answer";
    EXPECT_EQ(this->insert({spec("wide", wide_params, -7)}),
              std::vector{insert_outcome::same_content});
    EXPECT_EQ(this->insert({spec("wide", wide_params, 7)}), std::vector{insert_outcome::conflict});
    // A save of what was read before the prune does not bring the tombstone back.
    stale.state = job_state::pending;
    stale.finished_at.reset();
    this->ok(this->repo->save({{stale, {}, std::nullopt, std::nullopt, std::nullopt}}));
    EXPECT_FALSE(this->ok(this->repo->get("old"))) << "a tombstone is never overwritten";
    EXPECT_TRUE(this->ok(this->repo->history("old")).empty());
    for (auto& j : this->ok(this->repo->list({})))
        EXPECT_NE(j.id, "old");
    EXPECT_EQ(this->get("recent").state, job_state::failed);
    EXPECT_EQ(this->get("waiting").state, job_state::pending);
    EXPECT_EQ(this->get("hooked").state, job_state::completed);
    auto counts = this->ok(this->repo->counts());
    EXPECT_EQ((counts[{"pruned", "kling-o1"}]), 2);
    EXPECT_EQ((counts[{"completed", "kling-o1"}]), 1); // hooked
    // The id stays taken: the same job again is a no-op, another job with it a conflict.
    EXPECT_EQ(this->insert({spec("old")}), std::vector{insert_outcome::same_content});
    EXPECT_EQ(this->insert({spec("old", R"({"prompt":"other"})")}),
              std::vector{insert_outcome::conflict});
    EXPECT_EQ(this->insert({spec("old", R"({"prompt":"p"})", 5)}),
              std::vector{insert_outcome::conflict});
    EXPECT_FALSE(this->ok(this->repo->get("old")));
    // Nothing left to prune; a delivered hook frees its job.
    EXPECT_EQ(this->ok(this->repo->prune(cut, now, 100)), 0);
    auto taken = this->ok(this->repo->take_due_deliveries(now, now + seconds(60), "webhook", 10));
    ASSERT_EQ(taken.size(), 1u);
    taken[0].outcome = "delivered";
    this->ok(this->repo->finish_delivery(taken[0]));
    EXPECT_EQ(this->ok(this->repo->prune(cut, now, 100)), 1);
    EXPECT_TRUE(this->ok(this->repo->deliveries_of("hooked")).empty());
    if constexpr (TypeParam::durable) {
        this->repo = TypeParam::open(this->dir);
        EXPECT_EQ(this->insert({spec("hooked")}), std::vector{insert_outcome::same_content});
        EXPECT_FALSE(this->ok(this->repo->get("hooked")));
    }
}

TYPED_TEST(job_repository_test, a_final_state_writes_its_hook_deliveries_in_the_same_commit) {
    // Claims are timed by the database's clock on PostgreSQL: times here are now.
    auto now = time_point(std::chrono::duration_cast<milliseconds>(
        std::chrono::system_clock::now().time_since_epoch()));
    this->insert({spec("h")});
    auto j = this->get("h");
    j.state = job_state::failed;
    storage::hook_event e{"job.failed",
                          "failed",
                          R"({"type":"job.failed","n":1})",
                          {"command", "webhook"},
                          now - seconds(1)};
    this->ok(this->repo->save({{j, {}, std::nullopt, std::nullopt, e}}));
    // The same commit replayed (its answer was lost): the event once, its id unchanged.
    this->ok(this->repo->save({{j, {}, std::nullopt, std::nullopt, e}}));
    auto d = this->ok(this->repo->deliveries_of("h"));
    ASSERT_EQ(d.size(), 2u);
    EXPECT_EQ(d[0].event_id, "h-1-failed");
    EXPECT_EQ(d[1].event_id, "h-1-failed") << "one event, one id, for every target";
    EXPECT_EQ(d[0].target, "command");
    EXPECT_EQ(d[1].target, "webhook");
    EXPECT_EQ(d[0].outcome, "pending");
    EXPECT_EQ(d[0].attempts, 0);
    EXPECT_EQ(d[0].payload, R"({"type":"job.failed","n":1})");

    // Taken by target, once until released; taking counts the attempt.
    auto take = [&](const char* target) {
        return this->ok(this->repo->take_due_deliveries(now, now + seconds(60), target, 10));
    };
    auto command = take("command");
    ASSERT_EQ(command.size(), 1u);
    EXPECT_EQ(command[0].target, "command");
    EXPECT_EQ(command[0].attempts, 1);
    auto webhook = take("webhook");
    ASSERT_EQ(webhook.size(), 1u);
    EXPECT_TRUE(take("command").empty());
    EXPECT_TRUE(take("webhook").empty());
    this->ok(this->repo->release_deliveries());
    webhook = take("webhook");
    ASSERT_EQ(webhook.size(), 1u) << "released: due again";
    EXPECT_EQ(webhook[0].attempts, 2) << "the attempt cut short counts";
    command = take("command");
    ASSERT_EQ(command.size(), 1u);

    // Outcomes written back; a failed attempt waits for its next time.
    command[0].outcome = "delivered";
    this->ok(this->repo->finish_delivery(command[0]));
    webhook[0].last_error = "HTTP 503";
    webhook[0].next_at = now + std::chrono::hours(1);
    this->ok(this->repo->finish_delivery(webhook[0]));
    EXPECT_TRUE(take("webhook").empty()) << "not due for an hour";
    d = this->ok(this->repo->deliveries_of("h"));
    EXPECT_EQ(d[0].outcome, "delivered");
    EXPECT_EQ(d[1].outcome, "pending");
    EXPECT_EQ(d[1].attempts, 2);
    EXPECT_EQ(d[1].last_error.value_or(""), "HTTP 503");
    auto counts = this->ok(this->repo->delivery_counts());
    EXPECT_EQ(counts["delivered"], 1);
    EXPECT_EQ(counts["pending"], 1);

    // Retried and completed: a second event, its own id.
    j.state = job_state::completed;
    storage::hook_event done{"job.completed", "completed", "{}", {"webhook"}, now};
    this->ok(this->repo->save({{j, {}, std::nullopt, std::nullopt, done}}));
    d = this->ok(this->repo->deliveries_of("h"));
    ASSERT_EQ(d.size(), 3u);
    EXPECT_EQ(d[2].event_id, "h-2-completed");
}

TYPED_TEST(job_repository_test, a_batch_of_inserts_has_its_outcomes_in_order) {
    using storage::insert_outcome;
    this->insert({spec("x")});
    auto out = this->insert({spec("y"), spec("x", R"({"prompt":"q"})"), spec("z"), spec("y")});
    EXPECT_EQ(
        out, (std::vector<insert_outcome>{insert_outcome::inserted, insert_outcome::conflict,
                                          insert_outcome::inserted, insert_outcome::same_content}));
    auto counts = this->ok(this->repo->counts());
    EXPECT_EQ((counts[{"pending", "kling-o1"}]), 3);
}

TYPED_TEST(job_repository_test, save_round_trips_every_field_with_its_history) {
    this->insert({spec("a")});
    auto j = this->get("a");
    j.state = job_state::processing;
    j.request_id = "r-1";
    j.status_url = "https://x/v2/requests/r-1/status";
    j.response_url = "https://x/v2/requests/r-1";
    j.error = "an error";
    j.outputs = {"/out/a/result.json", "/out/a/output.png"};
    j.result = R"({"status":"COMPLETED"})";
    j.updated_at = t0 + milliseconds(5);
    j.submitted_at = t0 + milliseconds(1);
    j.remote_done_at = t0 + milliseconds(3);
    j.finished_at = t0 + milliseconds(4);
    j.attempts = 2;
    j.polls = 7;
    this->save(j, {{t0 + milliseconds(2), "submitting", "sent", std::nullopt},
                   {t0 + milliseconds(5), "processing", "a note", "r-1"}});
    if constexpr (TypeParam::durable)
        this->repo = TypeParam::open(this->dir); // and it survives reopening
    auto got = this->get("a");
    EXPECT_EQ(got.state, job_state::processing);
    EXPECT_EQ(got.request_id, "r-1");
    EXPECT_EQ(got.status_url, "https://x/v2/requests/r-1/status");
    EXPECT_EQ(got.response_url, "https://x/v2/requests/r-1");
    EXPECT_EQ(got.error, "an error");
    EXPECT_EQ(got.outputs, (std::vector<std::string>{"/out/a/result.json", "/out/a/output.png"}));
    EXPECT_EQ(got.result, R"({"status":"COMPLETED"})");
    EXPECT_EQ(got.phase, core::job_phase::download_due); // a stored result means: download next
    EXPECT_EQ(got.updated_at, t0 + milliseconds(5));
    EXPECT_EQ(got.submitted_at, t0 + milliseconds(1));
    EXPECT_EQ(got.remote_done_at, t0 + milliseconds(3));
    EXPECT_EQ(got.finished_at, t0 + milliseconds(4));
    EXPECT_EQ(got.attempts, 2);
    EXPECT_EQ(got.polls, 7);
    auto h = this->ok(this->repo->history("a"));
    ASSERT_EQ(h.size(), 3u);
    EXPECT_EQ(h[1].note, "sent");
    EXPECT_FALSE(h[1].request_id);
    EXPECT_EQ(h[2].note, "a note");
    EXPECT_EQ(h[2].state, "processing");
    EXPECT_EQ(h[2].request_id, "r-1");
    EXPECT_EQ(h[2].at, t0 + milliseconds(5));
}

// Spend limits: a "submitting" of a priced model is counted in its own commit, refused
// (and nothing of it written) when a limit would be passed; a refund takes an attempt back;
// sums are exact; an attempt counted twice (a resend after "not sent") counts once.
TYPED_TEST(job_repository_test, submissions_are_counted_against_the_limits_in_their_commit) {
    const auto day = t0 - milliseconds(3'600'000);    // this UTC day began an hour ago
    const auto month = t0 - milliseconds(86'400'000); // and the month a day ago
    auto charge = [&](const core::job& j, std::int64_t micro, std::int64_t daily,
                      std::int64_t monthly, time_point at) {
        storage::spend_charge c;
        c.model = j.model;
        c.micro = micro;
        c.attempt = j.attempts;
        c.at = at;
        c.day_start = day;
        c.month_start = month;
        c.daily_limit = daily;
        c.monthly_limit = monthly;
        return c;
    };
    std::vector<core::job_spec> specs;
    for (int i = 0; i < 5; ++i)
        specs.push_back(spec("s" + std::to_string(i)));
    this->insert(specs);
    // A charge from yesterday's part of the month: in the month's sum, not today's.
    auto old = this->get("s4");
    old.state = job_state::submitting;
    old.attempts = 1;
    this->ok(this->repo->save(
        {{old, {}, charge(old, 400'000, 0, 0, day - milliseconds(1)), std::nullopt}}));
    auto submit = [&](const std::string& id, std::int64_t micro, std::int64_t daily,
                      std::int64_t monthly) {
        auto j = this->get(id);
        j.state = job_state::submitting;
        j.attempts += 1;
        return await(this->repo->save({{j,
                                        {{t0, "submitting", "attempt", std::nullopt}},
                                        charge(j, micro, daily, monthly, t0),
                                        std::nullopt}}));
    };
    // 0.35 each against a daily limit of 1.0: two fit, the third is refused.
    EXPECT_TRUE(submit("s0", 350'000, 1'000'000, 0));
    EXPECT_TRUE(submit("s1", 350'000, 1'000'000, 0));
    auto refused = submit("s2", 350'000, 1'000'000, 0);
    ASSERT_FALSE(refused);
    EXPECT_TRUE(refused.error() == core::errc::spend_limit) << refused.error().message();
    EXPECT_EQ(refused.error().detail, "daily_limit 700000 1100000");
    EXPECT_EQ(this->get("s2").state, job_state::pending)
        << "nothing of a refused change is written";
    EXPECT_EQ(this->ok(this->repo->history("s2")).size(), 1u);
    // The month's limit counts yesterday's 0.4 too.
    auto monthly = submit("s2", 350'000, 0, 1'200'000);
    ASSERT_FALSE(monthly);
    EXPECT_EQ(monthly.error().detail, "monthly_limit 700000 1100000");
    auto totals = this->ok(this->repo->spend(day, month));
    EXPECT_EQ(totals.today, 700'000);
    EXPECT_EQ(totals.month, 1'100'000);
    // s1's submit created nothing (a 429): taken back, in the commit of its answer.
    auto s1 = this->get("s1");
    s1.state = job_state::pending;
    this->ok(this->repo->save({{s1, {}, std::nullopt, s1.attempts}}));
    EXPECT_EQ(this->ok(this->repo->spend(day, month)).today, 350'000);
    EXPECT_TRUE(submit("s2", 350'000, 1'000'000, 0)) << "room again";
    // The same attempt counted again (sent again after "not sent"): once.
    auto s2 = this->get("s2");
    this->ok(this->repo->save({{s2, {}, charge(s2, 350'000, 0, 0, t0), std::nullopt}}));
    EXPECT_EQ(this->ok(this->repo->spend(day, month)).today, 700'000);
    // Exact: 0.035 a thousand times is 35, not 34.99999.
    this->ok(this->repo->save({{s2, {}, std::nullopt, s2.attempts}}));
    this->ok(this->repo->save({{this->get("s0"), {}, std::nullopt, 1}}));
    std::vector<storage::job_change> many;
    auto s3 = this->get("s3");
    for (int i = 1; i <= 1000; ++i) {
        s3.attempts = i;
        many.push_back({s3, {}, charge(s3, 35'000, 0, 0, t0), std::nullopt});
    }
    this->ok(this->repo->save(std::move(many)));
    totals = this->ok(this->repo->spend(day, month));
    EXPECT_EQ(totals.today, 35'000'000);
    EXPECT_EQ(core::money_text(totals.today), "35");
    EXPECT_EQ(core::money_text(totals.month), "35.4");
}

TYPED_TEST(job_repository_test, a_save_of_many_jobs_writes_each_and_adds_no_history_unasked) {
    this->insert({spec("a"), spec("b")});
    auto a = this->get("a");
    auto b = this->get("b");
    a.polls = 3;
    b.state = job_state::queued;
    this->ok(this->repo->save({{a, {}}, {b, {}}}));
    EXPECT_EQ(this->get("a").polls, 3);
    EXPECT_EQ(this->get("b").state, job_state::queued);
    EXPECT_EQ(this->ok(this->repo->history("a")).size(), 1u);
}

TYPED_TEST(job_repository_test, list_filters_and_pages_with_a_cursor_in_recording_order) {
    for (int i = 0; i < 10; ++i)
        this->insert({{"j" + std::to_string(i), i % 2 ? "kling-o1" : "other", "{}", 0}});
    auto j3 = this->get("j3");
    j3.state = job_state::failed;
    this->save(j3);
    EXPECT_EQ(this->ok(this->repo->list({})).size(), 10u);
    EXPECT_EQ(this->ok(this->repo->list({.state = job_state::failed})).size(), 1u);
    EXPECT_EQ(this->ok(this->repo->list({.model = "kling-o1"})).size(), 5u);
    auto page1 = this->ok(this->repo->list({.limit = 4}));
    ASSERT_EQ(page1.size(), 4u);
    EXPECT_EQ(page1.back().id, "j3");
    auto page2 = this->ok(this->repo->list({.limit = 4, .after = page1.back().id}));
    ASSERT_EQ(page2.size(), 4u);
    EXPECT_EQ(page2.front().id, "j4");
    EXPECT_TRUE(page1.front().params.empty()); // lists do not carry params
}

TYPED_TEST(job_repository_test, unfinished_jobs_carry_params_only_where_a_submit_needs_them) {
    this->insert({spec("p"), spec("q"), spec("done")});
    auto q = this->get("q");
    q.state = job_state::queued;
    this->save(q);
    auto d = this->get("done");
    d.state = job_state::completed;
    this->save(d);
    auto u = this->ok(this->repo->unfinished());
    ASSERT_EQ(u.size(), 2u);
    EXPECT_EQ(u[0].id, "p");
    EXPECT_FALSE(u[0].params.empty());
    EXPECT_EQ(u[1].id, "q");
    EXPECT_TRUE(u[1].params.empty());
    EXPECT_EQ(this->ok(this->repo->params_of("q")), R"({"prompt":"p"})");
    EXPECT_EQ(this->ok(this->repo->params_of("nobody")), "");
}

TYPED_TEST(job_repository_test, recent_durations_are_those_of_completed_jobs_of_the_model) {
    this->insert({spec("a"), spec("b")});
    auto a = this->get("a");
    a.state = job_state::completed;
    a.submitted_at = t0;
    a.remote_done_at = t0 + milliseconds(57500);
    a.finished_at = t0 + milliseconds(60000);
    this->save(a);
    auto b = this->get("b");
    b.state = job_state::processing;
    b.submitted_at = t0;
    this->save(b);
    auto d = this->ok(this->repo->recent_durations("kling-o1", 10));
    ASSERT_EQ(d.size(), 1u);
    EXPECT_DOUBLE_EQ(d[0], 57.5);
    EXPECT_TRUE(this->ok(this->repo->recent_durations("other", 10)).empty());
}

TYPED_TEST(job_repository_test, meta_values_are_set_and_replaced) {
    EXPECT_FALSE(this->ok(this->repo->meta("paused")));
    this->ok(this->repo->set_meta("paused", "1"));
    this->ok(this->repo->set_meta("paused", "0"));
    EXPECT_EQ(this->ok(this->repo->meta("paused")), "0");
}

TYPED_TEST(job_repository_test, an_unknown_job_is_absent_not_an_error) {
    EXPECT_FALSE(this->ok(this->repo->get("nobody")));
    EXPECT_TRUE(this->ok(this->repo->history("nobody")).empty());
}

TYPED_TEST(job_repository_test, calls_complete_in_the_order_they_were_made) {
    namespace asio = boost::asio;
    this->insert({spec("a")});
    auto j = this->get("a");
    asio::io_context io;
    std::vector<int> order;
    // Ten saves started at once, each with a later poll count, then a read: the read
    // sees the last one, and the saves finish in the order they were started.
    for (int i = 1; i <= 10; ++i) {
        j.polls = i;
        asio::co_spawn(io, this->repo->save({{j, {}}}),
                       [&order, i](std::exception_ptr, core::result<std::vector<std::string>> r) {
                           EXPECT_TRUE(r);
                           order.push_back(i);
                       });
    }
    auto got = await(io, this->repo->get("a"));
    ASSERT_TRUE(got && *got);
    EXPECT_EQ((*got)->polls, 10);
    EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
}

// SQLite only: a database locked by another process.
class sqlite_repository_test : public ::testing::Test {
protected:
    test::temp_dir dir{"sqlite-repository"};
    std::string path = dir / "klingd.db";
};

TEST_F(sqlite_repository_test,
       a_locked_database_holds_up_neither_the_loop_nor_becomes_an_exception) {
    namespace asio = boost::asio;
    storage::sqlite_repository repo(path);
    await(repo.insert({spec("a")}, t0, {""}));
    auto j = *await(repo.get("a")).value();
    j.polls = 9;

    storage::connection other(path, SQLITE_OPEN_READWRITE);
    other.exec("BEGIN EXCLUSIVE", "lock the database");
    asio::io_context io;
    std::optional<core::result<std::vector<std::string>>> saved;
    asio::co_spawn(io, repo.save({{j, {}}}),
                   [&](std::exception_ptr e, core::result<std::vector<std::string>> r) {
                       EXPECT_FALSE(e);
                       saved = std::move(r);
                   });
    // While the save waits on the lock, the loop runs: a timer set after it fires first.
    asio::steady_timer tick(io, std::chrono::milliseconds(10));
    bool ticked = false;
    tick.async_wait([&](boost::system::error_code) { ticked = true; });
    while (!ticked && io.run_one() > 0) {
    }
    EXPECT_TRUE(ticked);
    EXPECT_FALSE(saved) << "the save finished although the database was locked";
    other.exec("ROLLBACK", "release the lock");
    while (!saved && io.run_one() > 0) {
    }
    ASSERT_TRUE(saved);
    EXPECT_TRUE(*saved) << saved->error().message();
    EXPECT_EQ(await(repo.get("a")).value()->polls, 9);
}

TEST_F(sqlite_repository_test, a_failed_write_is_an_error_with_its_kind_and_writes_nothing) {
    storage::sqlite_repository repo(path);
    await(repo.insert({spec("a")}, t0, {""}));
    auto j = *await(repo.get("a")).value();
    j.polls = 4;
    {
        storage::connection other(path, SQLITE_OPEN_READWRITE);
        sqlite3_busy_timeout(other.get(), 5000);
        // A trigger that refuses the write stands in for a failing disk.
        other.exec("CREATE TRIGGER refuse BEFORE UPDATE ON jobs BEGIN "
                   "SELECT RAISE(ABORT, 'the disk refused'); END",
                   "install a refusing trigger");
    }
    auto r = await(repo.save({{j, {{t0, "pending", "a line", std::nullopt}}}}));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), core::errc::store_failed);
    EXPECT_NE(r.error().message().find("the disk refused"), std::string::npos)
        << r.error().message();
    EXPECT_EQ(await(repo.get("a")).value()->polls, 0);
    EXPECT_EQ(await(repo.history("a")).value().size(), 1u); // the line went with the failed write
}

// PostgreSQL only: the schema's version, nodes starting together, a server that is
// gone or that stops answering.
class pg_repository_test : public ::testing::Test {
protected:
    template <class T>
    static T ok(storage::async_result<T> call) {
        auto r = await(std::move(call));
        EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
        if constexpr (!std::is_void_v<T>)
            return r ? std::move(*r) : T{};
    }
};

TEST_F(pg_repository_test, a_schema_newer_than_this_klingd_is_refused_and_left_alone) {
    auto db = test::fresh_pg_database();
    {
        storage::pg_repository repo(db);
        ok(repo.open());
    }
    auto& server = test::shared_pg_server();
    auto name = db.substr(db.rfind('=') + 1);
    server.query_value(name, "UPDATE klingd_schema SET version = 99");
    storage::pg_repository newer(db);
    auto r = await(newer.open());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("schema version 99, newer than this klingd"),
              std::string::npos)
        << r.error().message();
    EXPECT_EQ(server.query_value(name, "SELECT version FROM klingd_schema"), "99");
}

TEST_F(pg_repository_test, nodes_that_start_together_migrate_the_schema_once) {
    namespace asio = boost::asio;
    auto db = test::fresh_pg_database();
    asio::io_context io;
    std::vector<std::unique_ptr<storage::pg_repository>> nodes;
    int opened = 0;
    for (int i = 0; i < 5; ++i) {
        nodes.push_back(std::make_unique<storage::pg_repository>(db));
        asio::co_spawn(io, nodes.back()->open(),
                       [&opened](std::exception_ptr, core::result<void> r) {
                           EXPECT_TRUE(r) << (r ? "" : r.error().message());
                           opened += r ? 1 : 0;
                       });
    }
    io.run();
    EXPECT_EQ(opened, 5);
    auto name = db.substr(db.rfind('=') + 1);
    EXPECT_EQ(test::shared_pg_server().query_value(name, "SELECT count(*) FROM klingd_schema"),
              "1");
    EXPECT_EQ(test::shared_pg_server().query_value(name, "SELECT version FROM klingd_schema"),
              std::to_string(storage::pg_repository::schema_version));
}

TEST_F(pg_repository_test, a_stopped_server_is_an_error_and_the_next_call_reconnects) {
    test::pg_server server; // a private one: this test stops it
    // Passwords, never to be repeated (the test server trusts the socket and ignores them).
    storage::pg_repository repo(server.create_database() + " sslpassword=hunter3-secret",
                                std::chrono::seconds(10), "hunter2-secret");
    ok(repo.open());
    ok(repo.insert({spec("a")}, t0, {""}));
    server.stop();
    auto r = await(repo.get("a"));
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error() == core::errc::store_unavailable) << r.error().message();
    EXPECT_EQ(r.error().message().find("hunter2-secret"), std::string::npos) << r.error().message();
    EXPECT_EQ(r.error().message().find("hunter3-secret"), std::string::npos) << r.error().message();
    EXPECT_EQ(repo.target().find("secret"), std::string::npos) << repo.target();
    EXPECT_NE(repo.target().find("dbname="), std::string::npos) << repo.target();
    server.start();
    auto again = ok(repo.get("a"));
    ASSERT_TRUE(again);
    EXPECT_EQ(again->id, "a");
}

TEST_F(pg_repository_test, a_server_that_stops_answering_never_holds_up_the_callers_loop) {
    namespace asio = boost::asio;
    test::pg_server server;
    storage::pg_repository repo(server.create_database(), milliseconds(700));
    ok(repo.open());
    auto pid = test::read_file(server.dir() + "/data/postmaster.pid");
    pid = pid.substr(0, pid.find('\n'));
    // Every process of the server freezes (SIGSTOP): the connection stays up, nothing answers.
    ASSERT_EQ(std::system(("pkill -STOP -P " + pid + "; kill -STOP " + pid).c_str()), 0);
    asio::io_context io;
    int ticks = 0;
    bool done = false;
    asio::steady_timer tick(io);
    std::function<void()> again = [&] {
        tick.expires_after(milliseconds(10));
        tick.async_wait([&](boost::system::error_code ec) {
            if (ec || done)
                return;
            ++ticks;
            again();
        });
    };
    again();
    auto started = std::chrono::steady_clock::now();
    auto r = await(io, repo.get("a"));
    done = true;
    auto took = std::chrono::steady_clock::now() - started;
    std::system(("kill -CONT " + pid + "; pkill -CONT -P " + pid).c_str());
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error() == core::errc::store_unavailable) << r.error().message();
    EXPECT_GE(took, milliseconds(650));
    EXPECT_LT(took, std::chrono::seconds(5));
    EXPECT_GE(ticks, 30) << "the loop ran " << ticks << " timer ticks while the call waited";
    EXPECT_TRUE(ok(repo.meta("x")) == std::nullopt); // and it works again
}

} // namespace
