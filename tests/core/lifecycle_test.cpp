// The lifecycle state machine: every state, every class of API answer, recovery,
// cancel and retry. Time is a manual clock: `now` is passed in.
#include "core/lifecycle.hpp"

#include <gtest/gtest.h>

namespace {

using namespace klingd::core;
using std::chrono::seconds;
using transport = http_outcome::transport;

const time_point t0{milliseconds(1'800'000'000'000)};

struct fixture : ::testing::Test {
    duration_model durations{58};
    poll_planner planner{{1, 60, 3600}};
    lifecycle_context ctx;

    fixture() {
        ctx.retention_s = 3600;
        ctx.backoff_base_s = 1;
        ctx.backoff_cap_s = 60;
        ctx.base_url = "https://api.segmind.com";
        ctx.planner = &planner;
        ctx.durations = &durations;
        ctx.jitter01 = 0.5;
    }

    static job pending_job() {
        job j;
        j.id = "j1";
        j.model = "kling-o1";
        j.params = R"({"prompt":"p","image_urls":["https://x/a.png"]})";
        j.created_at = t0;
        return j;
    }

    static http_outcome answer(int status, std::string body, std::string retry_after = "",
                               std::string reset = "") {
        http_outcome o;
        o.status = status;
        o.body = std::move(body);
        o.retry_after = std::move(retry_after);
        o.reset_at = std::move(reset);
        return o;
    }
    static http_outcome transport_error(transport how, std::string msg) {
        http_outcome o;
        o.how = how;
        o.message = std::move(msg);
        return o;
    }

    transition go(const job& j, const event& e, time_point now = t0) {
        return advance(j, e, now, ctx);
    }

    job submitting() { return go(pending_job(), ev_submit_begin{}).next; }

    job queued(time_point at = t0) {
        auto t =
            go(submitting(), ev_submit_answer{answer(200, R"({"request_id":"r-1","status":"QUEUED",
            "status_url":"https://api.segmind.com/v2/requests/r-1/status",
            "response_url":"https://api.segmind.com/v2/requests/r-1"})")},
               at);
        EXPECT_EQ(t.next.state, job_state::queued);
        return t.next;
    }

    job result_due(time_point at) {
        auto t = go(queued(), ev_poll_answer{answer(200, R"({"status":"COMPLETED"})")}, at);
        EXPECT_EQ(t.next.phase, job_phase::result_due);
        return t.next;
    }
};

// --- submit ---

TEST_F(fixture, submit_begin_marks_submitting_durably_and_counts_the_attempt) {
    auto t = go(pending_job(), ev_submit_begin{});
    EXPECT_EQ(t.next.state, job_state::submitting);
    EXPECT_EQ(t.next.attempts, 1);
    EXPECT_EQ(t.persist, persist_mode::durable);
    EXPECT_EQ(t.work, work_kind::none); // the dispatcher sends it; nothing else is queued meanwhile
    EXPECT_EQ(t.note, "pending -> submitting: attempt 1");
}

// The request exists from the moment the POST left, not from when its answer came:
// an answer 40 s late (a slow API) does not move the retention's start.
TEST_F(fixture, a_late_submit_answer_dates_the_submission_from_the_send) {
    auto t = go(submitting(),
                ev_submit_answer{answer(200, R"({"request_id":"late","status":"QUEUED"})")},
                t0 + seconds(40));
    EXPECT_EQ(t.next.state, job_state::queued);
    EXPECT_EQ(t.next.submitted_at, t0);
}

TEST_F(fixture, submit_begin_on_a_non_pending_job_is_rejected_and_changes_nothing) {
    auto j = queued();
    auto t = go(j, ev_submit_begin{});
    EXPECT_FALSE(t.rejection.empty());
    EXPECT_EQ(t.next.state, job_state::queued);
    EXPECT_EQ(t.next.attempts, j.attempts);
}

TEST_F(fixture, submit_2xx_stores_request_id_durably_and_plans_a_poll) {
    auto t =
        go(submitting(), ev_submit_answer{answer(200, R"({"request_id":"abc-123","status":"QUEUED",
        "status_url":"https://queue.segmind.com/v2/requests/abc-123/status","response_url":"https://queue.segmind.com/v2/requests/abc-123"})")});
    EXPECT_EQ(t.next.state, job_state::queued);
    EXPECT_EQ(t.next.request_id, "abc-123");
    EXPECT_EQ(t.next.status_url,
              "https://queue.segmind.com/v2/requests/abc-123/status"); // followed as given
    EXPECT_EQ(t.next.submitted_at, t0);
    EXPECT_EQ(t.persist, persist_mode::durable);
    EXPECT_EQ(t.work, work_kind::poll);
    EXPECT_GT(t.not_before, t0 + seconds(10)); // not polled while surely still running
    EXPECT_EQ(t.signal, api_signal::accepted);
}

TEST_F(fixture, submit_2xx_without_urls_builds_them_from_the_base_url) {
    auto t = go(submitting(), ev_submit_answer{answer(200, R"({"request_id":"abc"})")});
    ASSERT_EQ(t.next.state, job_state::queued);
    EXPECT_EQ(t.next.status_url, "https://api.segmind.com/v2/requests/abc/status");
    EXPECT_EQ(t.next.response_url, "https://api.segmind.com/v2/requests/abc");
}

TEST_F(fixture, submit_2xx_without_request_id_fails_the_job_and_does_not_resubmit) {
    auto t = go(submitting(), ev_submit_answer{answer(200, R"({"status":"QUEUED"})")});
    EXPECT_EQ(t.next.state, job_state::failed);
    EXPECT_NE(t.next.error->find("no usable request_id"), std::string::npos);
    EXPECT_EQ(t.work, work_kind::none);
}

TEST_F(fixture, submit_2xx_with_hostile_request_id_is_not_followed) {
    auto t =
        go(submitting(), ev_submit_answer{answer(200, R"({"request_id":"../../etc/passwd"})")});
    EXPECT_EQ(t.next.state, job_state::failed);
}

struct permanent_case {
    int status;
    const char* expect;
};

class submit_permanent : public fixture, public ::testing::WithParamInterface<permanent_case> {};

TEST_P(submit_permanent, fails_with_the_detail) {
    auto [status, expect] = GetParam();
    auto t = go(submitting(), ev_submit_answer{answer(status, R"({"error":"the detail"})")});
    EXPECT_EQ(t.next.state, job_state::failed);
    ASSERT_TRUE(t.next.error);
    EXPECT_NE(t.next.error->find(expect), std::string::npos) << *t.next.error;
    EXPECT_NE(t.next.error->find("the detail"), std::string::npos) << *t.next.error;
    EXPECT_EQ(t.persist, persist_mode::durable);
    EXPECT_EQ(t.work, work_kind::none);
    EXPECT_EQ(t.next.attempts, 1);
}

INSTANTIATE_TEST_SUITE_P(codes, submit_permanent,
                         ::testing::Values(permanent_case{400, "submit rejected: HTTP 400"},
                                           permanent_case{403, "submit rejected: HTTP 403"},
                                           permanent_case{404, "unknown model \"kling-o1\""},
                                           permanent_case{410, "retired"},
                                           permanent_case{422, "HTTP 422"},
                                           permanent_case{418, "HTTP 418"}));

TEST_F(fixture, submit_401_returns_to_pending_untouched_and_stops_submissions) {
    auto t = go(submitting(), ev_submit_answer{answer(401, R"({"error":"Invalid API key"})")});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.next.attempts, 0);
    EXPECT_EQ(t.signal, api_signal::unauthorized);
    EXPECT_NE(t.signal_reason.find("Invalid API key"), std::string::npos);
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_EQ(t.persist, persist_mode::durable);
}

// The upload of a local input: a submit's error classes, nothing counted as an attempt.
TEST_F(fixture, upload_answers_follow_a_submits_error_classes_and_never_count_an_attempt) {
    const std::string in = "file:///m/a.png";
    auto j = pending_job();
    auto t = go(j, ev_upload_answer{answer(429, "{}", "7"), in});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.signal, api_signal::rate_limited);
    ASSERT_TRUE(t.rate_limited_until);
    EXPECT_EQ(*t.rate_limited_until, t0 + seconds(7));
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_EQ(t.next.attempts, 0);

    t = go(j, ev_upload_answer{answer(401, R"({"error":"Invalid API key"})"), in});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.signal, api_signal::unauthorized);
    t = go(j, ev_upload_answer{answer(406, R"({"error":"Insufficient credits"})"), in});
    EXPECT_EQ(t.signal, api_signal::no_credits);
    EXPECT_EQ(t.next.state, job_state::pending);

    t = go(j, ev_upload_answer{answer(502, "<html>bad gateway</html>"), in});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_GT(t.not_before, t0) << "a 5xx waits its backoff";
    EXPECT_EQ(t.next.failures, 1);
    t = go(j, ev_upload_answer{transport_error(transport::lost, "timeout"), in});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_GT(t.not_before, t0);

    t = go(j, ev_upload_answer{answer(413, R"({"error":"File too large"})"), in});
    EXPECT_EQ(t.next.state, job_state::failed);
    EXPECT_NE(t.next.error->find("File too large"), std::string::npos) << *t.next.error;
    EXPECT_NE(t.next.error->find(in), std::string::npos);
    t = go(j, ev_upload_answer{answer(200, R"({"nothing":[]})"), in});
    EXPECT_EQ(t.next.state, job_state::failed) << "a 2xx without a hosted URL";

    t = go(j, ev_input_failed{"input \"file:///m/a.png\" changed since it was taken in"});
    EXPECT_EQ(t.next.state, job_state::failed);
    EXPECT_NE(t.next.error->find("changed since"), std::string::npos);
    // Only a pending job uploads.
    EXPECT_FALSE(go(submitting(), ev_upload_answer{answer(429, "{}"), in}).rejection.empty());
    EXPECT_FALSE(go(submitting(), ev_input_failed{"x"}).rejection.empty());
}

TEST_F(fixture, submit_406_returns_to_pending_and_signals_no_credits) {
    auto t = go(submitting(), ev_submit_answer{answer(406, R"({"error":"Insufficient credits"})")});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.next.attempts, 0);
    EXPECT_EQ(t.signal, api_signal::no_credits);
}

TEST_F(fixture, submit_429_never_counts_against_the_job) {
    auto t = go(submitting(), ev_submit_answer{answer(429, R"({"error":"Rate limit"})", "7")});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.next.attempts, 0);
    EXPECT_EQ(t.next.failures, 0);
    EXPECT_FALSE(t.next.error);
    EXPECT_EQ(t.signal, api_signal::rate_limited);
    EXPECT_EQ(t.rate_limited_until, t0 + seconds(7));
}

TEST_F(fixture, submit_5xx_retries_with_growing_jittered_backoff) {
    job j = submitting();
    auto t1 = go(j, ev_submit_answer{answer(502, "Bad Gateway")});
    EXPECT_EQ(t1.next.state, job_state::pending);
    EXPECT_EQ(t1.work, work_kind::submit);
    EXPECT_EQ(t1.next.failures, 1);
    EXPECT_NE(t1.next.error->find("HTTP 502"), std::string::npos);
    EXPECT_EQ(t1.not_before, t0 + milliseconds(1000)); // jitter 0.5 of min(60, 1*2^1)
    auto j2 = go(t1.next, ev_submit_begin{}).next;
    auto t2 = go(j2, ev_submit_answer{answer(500, "")});
    EXPECT_EQ(t2.not_before, t0 + milliseconds(2000)); // 0.5 * 2^2
    EXPECT_EQ(t2.next.attempts, 2);                    // a 5xx is a real attempt
}

TEST_F(fixture, submit_not_sent_is_retried_and_not_counted) {
    auto t = go(submitting(),
                ev_submit_answer{transport_error(transport::not_sent, "connection refused")});
    EXPECT_EQ(t.next.state, job_state::pending);
    ASSERT_TRUE(t.next.error);
    EXPECT_NE(t.next.error->find("connection refused"),
              std::string::npos); // visible in the job list
    EXPECT_EQ(t.next.attempts, 0);
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_GT(t.not_before, t0);
}

// No connection (or no TLS handshake) before "submitting": the job never left pending.
TEST_F(fixture, a_submit_that_could_not_be_made_ready_stays_pending_and_is_retried) {
    auto t = go(pending_job(), ev_submit_deferred{"cannot connect to api: refused"});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.persist, persist_mode::batched) << "no state change to commit";
    ASSERT_TRUE(t.next.error);
    EXPECT_NE(t.next.error->find("cannot connect to api: refused"), std::string::npos);
    EXPECT_NE(t.note.find("submit not sent"), std::string::npos) << t.note;
    EXPECT_EQ(t.next.attempts, 0);
    EXPECT_EQ(t.next.failures, 1);
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_GT(t.not_before, t0);
    // The backoff grows with each failure.
    auto t2 = go(t.next, ev_submit_deferred{"refused"});
    EXPECT_EQ(t2.next.failures, 2);
    EXPECT_GT(t2.not_before, t.not_before);
    // Only a pending job can have its submit put off.
    EXPECT_NE(go(submitting(), ev_submit_deferred{"x"}).rejection, "");
}

TEST_F(fixture, submit_answer_lost_fails_when_resubmit_unknown_is_false) {
    auto t =
        go(submitting(), ev_submit_answer{transport_error(transport::lost, "timeout after 30s")});
    EXPECT_EQ(t.next.state, job_state::failed);
    EXPECT_NE(t.next.error->find("may or may not exist"), std::string::npos);
    EXPECT_NE(t.next.error->find("klingctl retry j1"), std::string::npos);
}

// A 2xx answer cut short after its request id names the request: it is followed, not
// failed as an unknown outcome (nothing is sent again either way).
TEST_F(fixture, a_submit_answer_cut_after_its_request_id_is_followed) {
    auto cut = transport_error(transport::lost, "answer cut short");
    cut.partial = R"({"request_id": "4f1c2b7e-aaaa-bbbb-cccc-0123456789ab", "status": "QUE)";
    auto t = go(submitting(), ev_submit_answer{cut});
    EXPECT_EQ(t.next.state, job_state::queued);
    EXPECT_EQ(t.next.request_id, "4f1c2b7e-aaaa-bbbb-cccc-0123456789ab");
    EXPECT_EQ(t.next.status_url,
              "https://api.segmind.com/v2/requests/4f1c2b7e-aaaa-bbbb-cccc-0123456789ab/status");
    EXPECT_EQ(t.persist, persist_mode::durable);
    EXPECT_NE(t.note.find("cut short after its request id"), std::string::npos) << t.note;
    // Cut inside the id, or before it: the outcome stays unknown.
    for (auto part : {R"({"request_id": "4f1c2b7e-aa)", R"({"stat)", R"({"error":"x"})"}) {
        cut.partial = part;
        EXPECT_EQ(go(submitting(), ev_submit_answer{cut}).next.state, job_state::failed) << part;
    }
}

TEST_F(fixture, submit_answer_lost_is_sent_again_when_resubmit_unknown_is_true) {
    ctx.resubmit_unknown = true;
    auto t =
        go(submitting(), ev_submit_answer{transport_error(transport::lost, "connection reset")});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_NE(t.note.find("resubmit_unknown = true"), std::string::npos);
}

// --- poll ---

TEST_F(fixture, poll_queued_then_processing_counts_polls_and_plans_the_next) {
    auto j = queued();
    auto t = go(j, ev_poll_answer{answer(200, R"({"status":"QUEUED"})")}, t0 + seconds(30));
    EXPECT_EQ(t.next.state, job_state::queued);
    EXPECT_EQ(t.next.polls, 1);
    EXPECT_EQ(t.work, work_kind::poll);
    EXPECT_GT(t.not_before, t0 + seconds(30));
    // Only the counter moved: it is written with the job's next write.
    EXPECT_EQ(t.persist, persist_mode::lazy);
    auto t2 =
        go(t.next, ev_poll_answer{answer(200, R"({"status":"PROCESSING"})")}, t0 + seconds(40));
    EXPECT_EQ(t2.next.state, job_state::processing);
    EXPECT_EQ(t2.next.polls, 2);
    EXPECT_EQ(t2.persist, persist_mode::batched);
    auto t3 =
        go(t2.next, ev_poll_answer{answer(200, R"({"status":"PROCESSING"})")}, t0 + seconds(50));
    EXPECT_EQ(t3.next.polls, 3);
    EXPECT_EQ(t3.persist, persist_mode::lazy);
    EXPECT_EQ(t2.note, "queued -> processing");
}

TEST_F(fixture, poll_completed_asks_for_the_result_at_once_and_gives_a_duration_sample) {
    auto j = queued();
    j.last_poll_at = t0 + seconds(50);
    auto t = go(j, ev_poll_answer{answer(200, R"({"status":"COMPLETED"})")}, t0 + seconds(60));
    EXPECT_EQ(t.next.state, job_state::processing); // completed only with files on disk
    EXPECT_EQ(t.next.phase, job_phase::result_due);
    EXPECT_EQ(t.work, work_kind::fetch_result);
    EXPECT_EQ(t.not_before, t0 + seconds(60));
    ASSERT_TRUE(t.duration_sample);
    // Between the last "not done" and "done".
    EXPECT_DOUBLE_EQ(t.duration_sample->lo, 50.0);
    EXPECT_DOUBLE_EQ(t.duration_sample->hi, 60.0);
}

TEST_F(fixture, poll_422_fails_with_the_detail) {
    auto t =
        go(queued(), ev_poll_answer{answer(422, R"({"status":"FAILED","error":"RAI block"})")});
    EXPECT_EQ(t.next.state, job_state::failed);
    EXPECT_NE(t.next.error->find("RAI block"), std::string::npos);
    EXPECT_EQ(t.persist, persist_mode::durable);
}

TEST_F(fixture, poll_404_expires_and_is_not_polled_again) {
    // A 404 well inside the retention window is asked again twice before it counts.
    auto first = go(queued(), ev_poll_answer{answer(404, R"({"error":"Request r-1 not found"})")});
    EXPECT_EQ(first.next.state, job_state::queued);
    EXPECT_EQ(first.work, work_kind::poll);
    auto second = go(first.next, ev_poll_answer{answer(404, "")});
    EXPECT_EQ(second.work, work_kind::poll);
    auto t = go(second.next, ev_poll_answer{answer(404, R"({"error":"Request r-1 not found"})")});
    EXPECT_EQ(t.next.state, job_state::expired);
    EXPECT_NE(t.next.error->find("404"), std::string::npos);
    EXPECT_EQ(t.work, work_kind::none);
}

TEST_F(fixture, poll_429_reschedules_without_failure) {
    auto t = go(queued(), ev_poll_answer{answer(429, "", "", "2027-01-15T08:00:30.500Z")}, t0);
    EXPECT_EQ(t.next.failures, 0);
    EXPECT_EQ(t.signal, api_signal::rate_limited);
    EXPECT_EQ(t.work, work_kind::poll);
    EXPECT_EQ(t.next.state, job_state::queued);
}

TEST_F(fixture, poll_5xx_and_transport_errors_retry_with_backoff) {
    auto t = go(queued(), ev_poll_answer{answer(504, "")}, t0 + seconds(5));
    EXPECT_EQ(t.work, work_kind::poll);
    EXPECT_EQ(t.next.failures, 1);
    EXPECT_EQ(t.next.state, job_state::queued);
    EXPECT_FALSE(t.log.empty());
    auto t2 =
        go(t.next, ev_poll_answer{transport_error(transport::lost, "reset")}, t0 + seconds(6));
    EXPECT_EQ(t2.next.failures, 2);
    EXPECT_EQ(t2.work, work_kind::poll);
    EXPECT_EQ(t2.next.polls, 2);
    auto t3 = go(t2.next, ev_poll_answer{transport_error(transport::not_sent, "refused")},
                 t0 + seconds(7));
    EXPECT_EQ(t3.next.polls, 2); // not sent: not a poll
}

TEST_F(fixture, poll_retry_never_waits_past_the_retention_window) {
    auto j = queued();
    j.failures = 30; // backoff would be the 60 s cap
    auto t = go(j, ev_poll_answer{answer(502, "")}, t0 + seconds(3590));
    EXPECT_EQ(t.work, work_kind::poll);
    EXPECT_LE(t.not_before, t0 + seconds(3600));
}

// A 429's block that lasts past a job's retention puts its result at risk: said, so the
// daemon can warn. Not for a job whose result is already fetched, nor one not submitted.
TEST_F(fixture, a_block_past_the_retention_end_is_known_to_put_the_result_at_risk) {
    auto j = queued(); // submitted at t0
    EXPECT_FALSE(expires_while_blocked(j, t0 + seconds(3599), 3600));
    EXPECT_TRUE(expires_while_blocked(j, t0 + seconds(3600), 3600));
    auto fetched = j;
    fetched.result = R"({"status":"COMPLETED"})";
    EXPECT_FALSE(expires_while_blocked(fetched, t0 + seconds(4000), 3600));
    EXPECT_FALSE(expires_while_blocked(pending_job(), t0 + seconds(4000), 3600));
}

TEST_F(fixture, poll_failing_past_retention_expires) {
    auto t = go(queued(), ev_poll_answer{answer(503, "")}, t0 + seconds(3601));
    EXPECT_EQ(t.next.state, job_state::expired);
}

TEST_F(fixture, poll_odd_4xx_and_406_are_retried_until_the_api_forgets_the_request) {
    auto j = queued();
    j.failures = 50;
    for (int code : {400, 403, 406, 410}) {
        auto t = go(j, ev_poll_answer{answer(code, R"({"error":"odd"})")}, t0 + seconds(100));
        EXPECT_EQ(t.next.state, job_state::queued) << code;
        EXPECT_EQ(t.work, work_kind::poll) << code;
        EXPECT_NE(t.signal, api_signal::no_credits)
            << "a 406 on a GET says nothing about submissions";
    }
    EXPECT_EQ(go(j, ev_poll_answer{answer(403, "")}, t0 + seconds(3600)).next.state,
              job_state::expired);
}

TEST_F(fixture, poll_401_signals_and_retries) {
    auto t = go(queued(), ev_poll_answer{answer(401, R"({"error":"bad key"})")});
    EXPECT_EQ(t.signal, api_signal::unauthorized);
    EXPECT_EQ(t.work, work_kind::poll);
    EXPECT_EQ(t.next.state, job_state::queued);
}

// --- result and download ---

TEST_F(fixture, result_200_stores_the_body_durably_and_asks_for_the_download) {
    auto j = result_due(t0 + seconds(60));
    std::string body = R"({"status":"COMPLETED","output":"https://cdn.example/x.png"})";
    auto t = go(j, ev_result_answer{answer(200, body)}, t0 + seconds(61));
    EXPECT_EQ(t.next.phase, job_phase::download_due);
    EXPECT_EQ(t.next.result, body);
    EXPECT_EQ(t.persist, persist_mode::durable);
    EXPECT_EQ(t.work, work_kind::download);
    EXPECT_EQ(t.next.state, job_state::processing);
}

TEST_F(fixture, result_still_running_goes_back_to_polling) {
    auto j = result_due(t0 + seconds(60));
    auto t = go(j, ev_result_answer{answer(200, R"({"status":"PROCESSING"})")}, t0 + seconds(61));
    EXPECT_EQ(t.next.phase, job_phase::none);
    EXPECT_EQ(t.work, work_kind::poll);
}

TEST_F(fixture, result_422_404_and_too_large) {
    auto j = result_due(t0 + seconds(60));
    EXPECT_EQ(go(j, ev_result_answer{answer(422, R"({"error":"boom"})")}).next.state,
              job_state::failed);
    EXPECT_EQ(go(j, ev_result_answer{answer(404, "")}).work,
              work_kind::fetch_result); // asked again
    auto retried = j;
    retried.failures = 2;
    EXPECT_EQ(go(retried, ev_result_answer{answer(404, "")}).next.state, job_state::expired);
    http_outcome big;
    big.too_large = true;
    big.message = "body over 8388608 bytes";
    auto t = go(j, ev_result_answer{big});
    EXPECT_EQ(t.next.state, job_state::failed);
    EXPECT_NE(t.next.error->find("max_result_bytes"), std::string::npos);
}

TEST_F(fixture, result_5xx_and_429_retry) {
    auto j = result_due(t0 + seconds(60));
    auto t = go(j, ev_result_answer{answer(500, "")}, t0 + seconds(61));
    EXPECT_EQ(t.work, work_kind::fetch_result);
    EXPECT_EQ(t.next.failures, 1);
    auto t2 = go(j, ev_result_answer{answer(429, "", "3")}, t0 + seconds(61));
    EXPECT_EQ(t2.work, work_kind::fetch_result);
    EXPECT_EQ(t2.not_before, t0 + seconds(64));
    EXPECT_EQ(t2.next.failures, 0);
}

TEST_F(fixture, download_done_completes_with_outputs) {
    auto j = result_due(t0 + seconds(60));
    j = go(j, ev_result_answer{answer(200, R"({"status":"COMPLETED","output":"https://c/x.png"})")})
            .next;
    auto t =
        go(j, ev_download_done{{"/out/j1/result.json", "/out/j1/output.png"}}, t0 + seconds(62));
    EXPECT_EQ(t.next.state, job_state::completed);
    EXPECT_EQ(t.next.outputs.size(), 2u);
    EXPECT_FALSE(t.next.result); // no longer kept in memory
    EXPECT_EQ(t.next.finished_at, t0 + seconds(62));
    EXPECT_EQ(t.persist, persist_mode::durable);
}

TEST_F(fixture, download_failure_retries_then_gives_up) {
    auto j = result_due(t0 + seconds(60));
    j = go(j, ev_result_answer{answer(200, R"({"status":"COMPLETED","output":"https://c/x.png"})")})
            .next;
    auto t = go(j, ev_download_failed{"HTTP 503", true});
    EXPECT_EQ(t.work, work_kind::download);
    EXPECT_EQ(t.next.state, job_state::processing);
    EXPECT_TRUE(t.next.result); // kept for the retry
    j.failures = 19;
    EXPECT_EQ(go(j, ev_download_failed{"HTTP 503", true}).next.state, job_state::failed);
    j.failures = 0;
    EXPECT_EQ(go(j, ev_download_failed{"URL is not http(s)", false}).next.state, job_state::failed);
}

TEST_F(fixture, a_full_local_disk_never_fails_the_job_and_keeps_the_result) {
    auto j = result_due(t0 + seconds(60));
    j = go(j, ev_result_answer{answer(200, R"({"status":"COMPLETED","output":"https://c/x.png"})")})
            .next;
    j.failures = 500;
    auto t = go(j, ev_download_failed{"cannot write out/x: No space left on device", true, true});
    EXPECT_EQ(t.work, work_kind::download);
    EXPECT_EQ(t.next.state, job_state::processing);
    EXPECT_TRUE(t.next.result);
    EXPECT_LE(t.not_before - t0, seconds(static_cast<int>(ctx.backoff_cap_s) + 1))
        << "the retry waits at most the backoff cap";
}

// --- recovery, expiry, cancel, retry ---

TEST_F(fixture, recover_pending_submits) {
    auto t = go(pending_job(), ev_recover{});
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_EQ(t.next.state, job_state::pending);
}

TEST_F(fixture, recover_submitting_fails_by_default_and_says_why) {
    auto t = go(submitting(), ev_recover{});
    EXPECT_EQ(t.next.state, job_state::failed);
    EXPECT_NE(t.next.error->find("resubmit_unknown = false"), std::string::npos);
}

TEST_F(fixture, recover_submitting_resubmits_when_configured_and_says_so) {
    ctx.resubmit_unknown = true;
    auto t = go(submitting(), ev_recover{});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_EQ(t.work, work_kind::submit);
    ASSERT_TRUE(t.next.error);
    EXPECT_NE(t.next.error->find("resubmit_unknown = true"), std::string::npos);
}

TEST_F(fixture, recover_submitted_polls_at_once) {
    auto t = go(queued(), ev_recover{}, t0 + seconds(100));
    EXPECT_EQ(t.work, work_kind::poll);
    EXPECT_EQ(t.not_before, t0 + seconds(100));
}

TEST_F(fixture, recover_past_retention_expires_with_reason) {
    auto t = go(queued(), ev_recover{}, t0 + seconds(3700));
    EXPECT_EQ(t.next.state, job_state::expired);
    EXPECT_NE(t.next.error->find("down past the API's retention"), std::string::npos);
    EXPECT_EQ(t.work, work_kind::none);
}

TEST_F(fixture, recover_with_stored_result_downloads_even_past_retention) {
    auto j = queued();
    j.result = R"({"status":"COMPLETED","output":"https://c/x.png"})";
    auto t = go(j, ev_recover{}, t0 + seconds(7200));
    EXPECT_EQ(t.work, work_kind::download);
    EXPECT_EQ(t.next.phase, job_phase::download_due);
}

TEST_F(fixture, recover_terminal_does_nothing) {
    auto j = pending_job();
    j.state = job_state::completed;
    auto t = go(j, ev_recover{});
    EXPECT_EQ(t.work, work_kind::none);
    EXPECT_EQ(t.persist, persist_mode::none);
}

TEST_F(fixture, expire_event) {
    auto t = go(queued(), ev_expire{}, t0 + seconds(3600));
    EXPECT_EQ(t.next.state, job_state::expired);
    EXPECT_NE(t.next.error->find("not fetched within"), std::string::npos);
    EXPECT_TRUE(past_retention(queued(), t0 + seconds(3600), 3600));
    EXPECT_FALSE(past_retention(queued(), t0 + seconds(3599), 3600));
}

TEST_F(fixture, cancel_only_pending) {
    auto t = go(pending_job(), ev_cancel{});
    EXPECT_EQ(t.next.state, job_state::cancelled);
    EXPECT_TRUE(t.rejection.empty());
    auto t2 = go(queued(), ev_cancel{});
    EXPECT_NE(t2.rejection.find("no cancel endpoint"), std::string::npos);
    EXPECT_EQ(t2.next.state, job_state::queued);
}

TEST_F(fixture, retry_only_failed_or_expired_and_keeps_nothing_of_the_old_request) {
    auto failed = go(queued(), ev_poll_answer{answer(422, R"({"error":"x"})")}).next;
    auto t = go(failed, ev_retry{});
    EXPECT_EQ(t.next.state, job_state::pending);
    EXPECT_FALSE(t.next.request_id);
    EXPECT_FALSE(t.next.error);
    EXPECT_EQ(t.work, work_kind::submit);
    EXPECT_NE(t.note.find("previous request r-1"), std::string::npos);
    EXPECT_NE(go(queued(), ev_retry{}).rejection, "");
    EXPECT_NE(go(pending_job(), ev_retry{}).rejection, "");
}

} // namespace
