// The job store on real SQLite files: schema, idempotent inserts, round trips,
// history, paging, and refusal to touch a file that is not ours.
#include "storage/job_store.hpp"
#include "tests/support/child_process.hpp"

#include <gtest/gtest.h>

namespace {

using namespace klingd;
using core::job_state;
using core::milliseconds;
using core::time_point;

const time_point t0{milliseconds(1'800'000'000'000)};

core::job_spec spec(std::string id, std::string params = R"({"prompt":"p"})", int priority = 0) {
    return {std::move(id), "kling-o1", std::move(params), priority};
}

class job_store_test : public ::testing::Test {
protected:
    test::temp_dir dir{"store"};
    std::string path = dir / "klingd.db";
};

TEST_F(job_store_test, creates_the_schema_in_wal_mode_with_a_version) {
    storage::job_store s(path);
    storage::statement v(s.db(), "PRAGMA user_version");
    ASSERT_TRUE(v.step());
    EXPECT_EQ(v.int64(0), storage::job_store::schema_version);
    v.reset();
    storage::statement m(s.db(), "PRAGMA journal_mode");
    ASSERT_TRUE(m.step());
    EXPECT_EQ(m.text(0), "wal");
}

TEST_F(job_store_test, insert_is_idempotent_for_the_same_content_and_refuses_other_content) {
    storage::job_store s(path);
    EXPECT_EQ(s.insert(spec("a"), t0, "spool:a.json"), storage::insert_outcome::inserted);
    EXPECT_EQ(s.insert(spec("a"), t0, "spool:a.json"), storage::insert_outcome::same_content);
    EXPECT_EQ(s.insert(spec("a", R"({"prompt":"other"})"), t0, "socket"),
              storage::insert_outcome::conflict);
    EXPECT_EQ(s.insert(spec("a", R"({"prompt":"p"})", 3), t0, "socket"),
              storage::insert_outcome::conflict);
    auto j = s.get("a");
    ASSERT_TRUE(j);
    EXPECT_EQ(j->state, job_state::pending);
    EXPECT_EQ(j->params, R"({"prompt":"p"})");
    EXPECT_EQ(j->created_at, t0);
    auto h = s.history("a");
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].note, "accepted from spool:a.json");
}

TEST_F(job_store_test, insert_many_is_one_transaction_with_outcomes_in_order) {
    storage::job_store s(path);
    s.insert(spec("x"), t0, "");
    auto out =
        s.insert_many({spec("y"), spec("x", R"({"prompt":"q"})"), spec("z")}, t0, {"a", "b", "c"});
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0], storage::insert_outcome::inserted);
    EXPECT_EQ(out[1], storage::insert_outcome::conflict);
    EXPECT_EQ(out[2], storage::insert_outcome::inserted);
    EXPECT_EQ(s.count_by_state().at("pending"), 3);
}

TEST_F(job_store_test, save_round_trips_every_field_and_survives_reopening) {
    {
        storage::job_store s(path);
        s.insert(spec("a"), t0, "");
        auto j = *s.get("a");
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
        s.save(j, "a note");
    }
    storage::job_store s(path);
    auto j = s.get("a");
    ASSERT_TRUE(j);
    EXPECT_EQ(j->state, job_state::processing);
    EXPECT_EQ(j->request_id, "r-1");
    EXPECT_EQ(j->status_url, "https://x/v2/requests/r-1/status");
    EXPECT_EQ(j->response_url, "https://x/v2/requests/r-1");
    EXPECT_EQ(j->error, "an error");
    EXPECT_EQ(j->outputs, (std::vector<std::string>{"/out/a/result.json", "/out/a/output.png"}));
    EXPECT_EQ(j->result, R"({"status":"COMPLETED"})");
    EXPECT_EQ(j->phase, core::job_phase::download_due); // a stored result means: download next
    EXPECT_EQ(j->updated_at, t0 + milliseconds(5));
    EXPECT_EQ(j->submitted_at, t0 + milliseconds(1));
    EXPECT_EQ(j->remote_done_at, t0 + milliseconds(3));
    EXPECT_EQ(j->finished_at, t0 + milliseconds(4));
    EXPECT_EQ(j->attempts, 2);
    EXPECT_EQ(j->polls, 7);
    auto h = s.history("a");
    ASSERT_EQ(h.size(), 2u);
    EXPECT_EQ(h[1].note, "a note");
    EXPECT_EQ(h[1].state, "processing");
    EXPECT_EQ(h[1].request_id, "r-1");
}

TEST_F(job_store_test, save_without_note_adds_no_history) {
    storage::job_store s(path);
    s.insert(spec("a"), t0, "");
    auto j = *s.get("a");
    j.polls = 3;
    s.save_many({{j, {}}});
    EXPECT_EQ(s.history("a").size(), 1u);
    EXPECT_EQ(s.get("a")->polls, 3);
}

TEST_F(job_store_test, list_filters_and_pages_with_a_cursor) {
    storage::job_store s(path);
    for (int i = 0; i < 10; ++i)
        s.insert({"j" + std::to_string(i), i % 2 ? "kling-o1" : "other", "{}", 0}, t0, "");
    auto j3 = *s.get("j3");
    j3.state = job_state::failed;
    s.save(j3);
    EXPECT_EQ(s.list({}).size(), 10u);
    EXPECT_EQ(s.list({.state = job_state::failed}).size(), 1u);
    EXPECT_EQ(s.list({.model = "kling-o1"}).size(), 5u);
    auto page1 = s.list({.limit = 4});
    ASSERT_EQ(page1.size(), 4u);
    EXPECT_EQ(page1.back().id, "j3");
    auto page2 = s.list({.limit = 4, .after = page1.back().id});
    ASSERT_EQ(page2.size(), 4u);
    EXPECT_EQ(page2.front().id, "j4");
    EXPECT_TRUE(page1.front().params.empty()); // lists do not carry params
}

TEST_F(job_store_test, unfinished_loads_params_only_where_needed) {
    storage::job_store s(path);
    s.insert(spec("p"), t0, "");
    s.insert(spec("q"), t0, "");
    s.insert(spec("done"), t0, "");
    auto q = *s.get("q");
    q.state = job_state::queued;
    s.save(q);
    auto d = *s.get("done");
    d.state = job_state::completed;
    s.save(d);
    auto u = s.unfinished();
    ASSERT_EQ(u.size(), 2u);
    EXPECT_EQ(u[0].id, "p");
    EXPECT_FALSE(u[0].params.empty());
    EXPECT_EQ(u[1].id, "q");
    EXPECT_TRUE(u[1].params.empty());
    EXPECT_EQ(s.params_of("q"), R"({"prompt":"p"})");
}

TEST_F(job_store_test, recent_durations_of_completed_jobs) {
    storage::job_store s(path);
    s.insert(spec("a"), t0, "");
    auto a = *s.get("a");
    a.state = job_state::completed;
    a.submitted_at = t0;
    a.remote_done_at = t0 + milliseconds(57500);
    a.finished_at = t0 + milliseconds(60000);
    s.save(a);
    auto d = s.recent_durations("kling-o1", 10);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_DOUBLE_EQ(d[0], 57.5);
    EXPECT_TRUE(s.recent_durations("other", 10).empty());
}

TEST_F(job_store_test, meta_values) {
    storage::job_store s(path);
    EXPECT_FALSE(s.meta("paused"));
    s.set_meta("paused", "1");
    s.set_meta("paused", "0");
    EXPECT_EQ(s.meta("paused"), "0");
}

TEST_F(job_store_test, a_file_that_is_not_a_database_is_refused_and_left_untouched) {
    std::string garbage(8192, 'x');
    test::write_file(path, garbage);
    try {
        storage::job_store s(path);
        FAIL() << "opened garbage";
    } catch (const storage::storage_error& e) {
        EXPECT_NE(std::string(e.what()).find("not a database"), std::string::npos) << e.what();
    }
    EXPECT_EQ(test::read_file(path), garbage);
}

TEST_F(job_store_test, a_database_from_a_newer_klingd_is_refused) {
    {
        storage::connection c(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
        c.exec("PRAGMA user_version = 99", "set version");
    }
    try {
        storage::job_store s(path);
        FAIL() << "opened a newer schema";
    } catch (const storage::storage_error& e) {
        EXPECT_NE(std::string(e.what()).find("newer than this klingd understands"),
                  std::string::npos)
            << e.what();
    }
}

TEST_F(job_store_test, a_database_of_schema_version_1_is_migrated_forward_with_every_row) {
    {
        storage::connection c(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
        c.exec(test::read_file(std::string(KLINGD_SOURCE_DIR) +
                               "/tests/storage/fixtures/schema-v1.sql"),
               "load the version 1 fixture");
    }
    storage::job_store s(path);
    storage::statement v(s.db(), "PRAGMA user_version");
    ASSERT_TRUE(v.step());
    EXPECT_EQ(v.int64(0), storage::job_store::schema_version);
    v.reset();
    storage::statement idx(s.db(),
                           "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = "
                           "'jobs' AND name LIKE 'jobs_by_%' ORDER BY name");
    std::vector<std::string> names;
    while (idx.step())
        names.push_back(idx.text(0));
    idx.reset();
    EXPECT_EQ(names, std::vector<std::string>{"jobs_by_state_model"});

    auto running = s.get("old-running");
    ASSERT_TRUE(running);
    EXPECT_EQ(running->state, job_state::processing);
    EXPECT_EQ(running->request_id.value_or(""), "0e7c5d1a-1111-4222-8333-444455556666");
    EXPECT_EQ(running->priority, 3);
    EXPECT_EQ(running->polls, 2);
    ASSERT_TRUE(running->submitted_at);
    EXPECT_EQ(*running->submitted_at, t0 + milliseconds(500));
    auto done = s.get("old-done");
    ASSERT_TRUE(done);
    EXPECT_EQ(done->state, job_state::completed);
    EXPECT_EQ(done->outputs.size(), 2u);
    EXPECT_EQ(s.history("old-running").size(), 1u);
    auto counts = s.count_by_state_and_model();
    EXPECT_EQ((counts[{"processing", "kling-o1"}]), 1);
    EXPECT_EQ((counts[{"completed", "kling-o1"}]), 1);
    EXPECT_EQ(s.unfinished().size(), 1u);
}

TEST_F(job_store_test, a_damaged_database_is_refused_with_the_reason_and_left_untouched) {
    {
        storage::job_store s(path);
        std::vector<core::job_spec> specs;
        for (int i = 0; i < 2000; ++i)
            specs.push_back(
                spec("job" + std::to_string(i), R"({"prompt":"a longer prompt to fill pages"})"));
        s.insert_many(specs, t0, std::vector<std::string>(specs.size(), "test"));
    }
    // Checkpointed and closed: all in the main file. Scribble over pages past the first.
    std::string bytes = test::read_file(path);
    ASSERT_GT(bytes.size(), 64u * 1024);
    for (std::size_t i = 8192; i < 40960; ++i)
        bytes[i] = static_cast<char>((i * 131) & 0xff);
    test::write_file(path, bytes);
    try {
        storage::job_store s(path);
        FAIL() << "opened a damaged database";
    } catch (const storage::storage_error& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("is damaged"), std::string::npos) << what;
        EXPECT_NE(what.find(path), std::string::npos) << what;
    }
    EXPECT_TRUE(test::read_file(path) == bytes) << "the damaged file was modified";
}

TEST_F(job_store_test, a_transaction_rolls_back_unless_committed) {
    storage::job_store s(path);
    {
        storage::transaction t(s.db());
        s.db().exec("INSERT INTO meta (key, value) VALUES ('k', 'v')", "insert");
    }
    EXPECT_FALSE(s.meta("k"));
}

} // namespace
