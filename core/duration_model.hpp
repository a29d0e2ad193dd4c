// How long a model's requests take, as a log-normal distribution: the configured
// prior (expected_duration_s as the median) blended with what completed jobs
// have shown, so the poll planner can place polls where completion is likely.
#pragma once

#include <cstddef>
#include <vector>

namespace klingd::core {

class duration_model {
public:
    // How many recent completions the fit remembers.
    static constexpr std::size_t ring_size = 2048;

    explicit duration_model(double prior_median_s, double prior_sigma = 0.35);

    // A completed request's duration from submission to completion, in seconds.
    void add_sample(double seconds);
    // A completed request whose duration is only known to lie in (lo, hi]: it was last seen
    // unfinished lo seconds after submission (0: never polled before) and seen done at hi.
    // With sparse polls the interval is wide and its midpoint is biased; the fit treats it
    // as censored data instead (maximum likelihood by EM on the log scale).
    void add_interval(double lo, double hi);
    void set_prior(double prior_median_s);
    // Fits what was added since the last fit (adding refits only every 8 samples).
    void fit();

    double median() const;
    double sigma() const;
    // P(duration <= t).
    double cdf(double t) const;
    // The time by which a share p of requests is done; p in (0, 1).
    double quantile(double p) const;
    std::size_t samples() const { return count_; }
    // How much of the fit is still the prior: 1 with no samples, towards 0 with many.
    double prior_share() const;

private:
    void refit();

    double prior_mu_;
    double prior_sigma_;
    struct interval {
        double lo; // log of the lower bound; -infinity when unbounded
        double hi; // log of the upper bound; == lo when exact
    };
    std::vector<interval> logs_; // ring of the most recent log-durations
    std::size_t next_ = 0;
    std::size_t count_ = 0;
    double mu_;
    double sigma_;
};

// Standard normal CDF and its inverse (|error| < 1.2e-9 for the inverse).
double normal_cdf(double z);
double normal_quantile(double p);

} // namespace klingd::core
