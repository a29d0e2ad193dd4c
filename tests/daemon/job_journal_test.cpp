// The job journal in-process on a real SQLite file behind the storage seam: what
// is written when, in what order, and its crash rules (durable writes carry owed
// history; a job that left memory keeps its last state until written; a failed
// write keeps everything it owed).
#include "daemon/job_journal.hpp"
#include "storage/job_store.hpp"
#include "storage/sqlite_repository.hpp"
#include "tests/support/await.hpp"
#include "tests/support/child_process.hpp"

#include <boost/asio/co_spawn.hpp>
#include <gtest/gtest.h>
#include <sqlite3.h>

namespace {

using namespace klingd;
using core::job_state;

const core::time_point t0{core::milliseconds(1'800'000'000'000)};

class journal : public ::testing::Test {
protected:
    test::temp_dir dir{"journal"};
    boost::asio::io_context io;
    std::optional<storage::sqlite_repository> store;
    daemon::manual_clock clock{t0};
    std::optional<daemon::job_journal> j;
    std::map<std::string, core::job> active;

    void SetUp() override {
        // A short wait for a lock: the tests that lock the database wait on it.
        store.emplace(dir / "klingd.db",
                      storage::sqlite_tuning{.busy_timeout = std::chrono::milliseconds(50)});
        j.emplace(*store, clock, [this](const std::string& id) -> const core::job* {
            auto it = active.find(id);
            return it == active.end() ? nullptr : &it->second;
        });
        test::await(io, store->insert({core::job_spec{"a", "kling-o1", R"({"prompt":"x"})", 0}}, t0,
                                      {"test"}));
        active["a"] = *test::await(io, store->get("a")).value();
    }
    core::result<void> flush() { return test::await(io, j->flush()); }
    core::result<void> write_now(core::job next, storage::history_entry l) {
        return test::await(io, j->write_now(std::move(next), std::move(l)));
    }
    static storage::history_entry line(job_state s, std::string note) {
        return {t0, std::string(core::to_string(s)), std::move(note), std::nullopt};
    }
    // The state the database holds now, read by a second connection as a restart would.
    std::string stored_state(const std::string& id) {
        storage::job_store other(dir / "klingd.db");
        auto got = other.get(id);
        return got ? std::string(core::to_string(got->state)) : "none";
    }
    std::size_t stored_history(const std::string& id) {
        storage::job_store other(dir / "klingd.db");
        return other.history(id).size();
    }
};

TEST_F(journal, a_deferred_change_is_written_only_by_the_flush) {
    active["a"].state = job_state::queued;
    active["a"].request_id = "r1";
    j->defer("a", line(job_state::queued, "queued at the API"));
    EXPECT_EQ(stored_state("a"), "pending");
    EXPECT_EQ(j->pending(), 1u);
    ASSERT_TRUE(flush());
    EXPECT_EQ(stored_state("a"), "queued");
    EXPECT_EQ(stored_history("a"), 2u);
    EXPECT_TRUE(j->empty());
}

TEST_F(journal, a_durable_write_carries_the_history_the_job_owes) {
    active["a"].state = job_state::queued;
    j->defer("a", line(job_state::queued, "one"));
    j->defer("a", line(job_state::queued, "two"));
    core::job next = active["a"];
    next.state = job_state::processing;
    ASSERT_TRUE(write_now(next, line(job_state::processing, "three")));
    EXPECT_EQ(stored_state("a"), "processing");
    EXPECT_EQ(stored_history("a"), 4u); // accepted, one, two, three
    EXPECT_TRUE(j->empty());
}

TEST_F(journal, lazy_changes_wait_for_shutdown) {
    active["a"].polls = 7;
    j->defer_lazy("a");
    ASSERT_TRUE(flush());
    {
        storage::job_store other(dir / "klingd.db");
        EXPECT_EQ(other.get("a")->polls, 0);
    }
    j->include_lazy();
    ASSERT_TRUE(flush());
    storage::job_store other(dir / "klingd.db");
    EXPECT_EQ(other.get("a")->polls, 7);
}

TEST_F(journal, a_job_that_left_memory_keeps_its_last_state_until_written) {
    active["a"].state = job_state::cancelled;
    j->defer("a", line(job_state::cancelled, "cancelled"));
    j->retire(active["a"]);
    active.erase("a");
    ASSERT_TRUE(flush());
    EXPECT_EQ(stored_state("a"), "cancelled");
}

TEST_F(journal, a_locked_database_fails_the_flush_and_nothing_is_lost) {
    active["a"].state = job_state::queued;
    j->defer("a", line(job_state::queued, "queued"));
    sqlite3* locker = nullptr;
    ASSERT_EQ(sqlite3_open((dir / "klingd.db").c_str(), &locker), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(locker, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
    auto r = flush();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), core::errc::store_busy) << r.error().message();
    core::job next = active["a"];
    next.state = job_state::processing;
    auto w = write_now(next, line(job_state::processing, "now"));
    ASSERT_FALSE(w);
    EXPECT_EQ(w.error(), core::errc::store_busy);
    EXPECT_EQ(j->pending(), 1u) << "the deferred change is kept";
    sqlite3_exec(locker, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(locker);
    ASSERT_TRUE(flush());
    EXPECT_EQ(stored_state("a"), "queued");
    EXPECT_EQ(stored_history("a"), 2u);
}

} // namespace

namespace {

TEST_F(journal, times_go_to_the_database_on_the_wall_clock_after_it_is_stepped) {
    // Engine time stays monotonic; the wall clock jumps an hour ahead (NTP).
    clock.step_wall(std::chrono::hours(1));
    active["a"].state = job_state::queued;
    active["a"].submitted_at = t0 + core::milliseconds(500);
    active["a"].updated_at = t0 + core::milliseconds(500);
    j->defer("a", storage::history_entry{t0 + core::milliseconds(500), "queued", "queued", "r1"});
    ASSERT_TRUE(flush());
    storage::job_store other(dir / "klingd.db");
    auto stored = other.get("a");
    ASSERT_TRUE(stored && stored->submitted_at);
    EXPECT_EQ(*stored->submitted_at, t0 + std::chrono::hours(1) + core::milliseconds(500));
    EXPECT_EQ(other.history("a").back().at, t0 + std::chrono::hours(1) + core::milliseconds(500));
    // And back, as a restart reads it: the same engine time.
    EXPECT_EQ(clock.from_wall(*stored->submitted_at), t0 + core::milliseconds(500));
}

} // namespace

namespace {

TEST_F(journal, a_durable_write_asked_after_a_flush_lands_after_it_in_state_and_history) {
    active["a"].state = job_state::queued;
    j->defer("a", line(job_state::queued, "queued"));
    core::job next = active["a"];
    next.state = job_state::processing;
    // Both asked at once, neither awaited before the other starts.
    std::vector<std::string> finished;
    io.restart();
    boost::asio::co_spawn(io, j->flush(), [&](std::exception_ptr, core::result<void> r) {
        EXPECT_TRUE(r);
        finished.push_back("flush");
    });
    boost::asio::co_spawn(io, j->write_now(next, line(job_state::processing, "processing")),
                          [&](std::exception_ptr, core::result<void> r) {
                              EXPECT_TRUE(r);
                              finished.push_back("durable");
                          });
    while (finished.size() < 2 && io.run_one() > 0) {
    }
    EXPECT_EQ(finished, (std::vector<std::string>{"flush", "durable"}));
    EXPECT_EQ(stored_state("a"), "processing");
    storage::job_store other(dir / "klingd.db");
    auto h = other.history("a");
    ASSERT_EQ(h.size(), 3u);
    EXPECT_EQ(h[1].note, "queued");
    EXPECT_EQ(h[2].note, "processing");
}

TEST_F(journal, a_job_that_leaves_memory_while_a_failing_flush_is_on_its_way_keeps_its_state) {
    active["a"].state = job_state::queued;
    j->defer("a", line(job_state::queued, "queued"));
    storage::connection locker(dir / "klingd.db", SQLITE_OPEN_READWRITE);
    locker.exec("BEGIN EXCLUSIVE", "lock the database");
    bool done = false;
    core::result<void> flushed;
    io.restart();
    boost::asio::co_spawn(io, j->flush(), [&](std::exception_ptr, core::result<void> r) {
        flushed = std::move(r);
        done = true;
    });
    io.poll(); // the flush has taken the change and is on its way
    EXPECT_TRUE(j->empty());
    // Meanwhile the job ends and leaves memory.
    active["a"].state = job_state::cancelled;
    j->retire(active["a"]);
    active.erase("a");
    ASSERT_NE(j->retired("a"), nullptr) << "its last state is answered from the journal";
    while (!done && io.run_one() > 0) {
    }
    ASSERT_FALSE(flushed) << "the database was locked";
    locker.exec("ROLLBACK", "unlock");
    ASSERT_TRUE(flush());
    EXPECT_EQ(stored_state("a"), "cancelled");
    EXPECT_EQ(stored_history("a"), 2u); // accepted, queued
}

} // namespace
