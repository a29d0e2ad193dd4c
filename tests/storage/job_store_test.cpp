// What is SQLite's own in the job store, on real files: the schema, its migrations,
// and refusal to touch a file that is not ours. What every backend does is in
// job_repository_test.cpp.
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
