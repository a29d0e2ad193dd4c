// How long a model's requests take, as a log-normal distribution: the configured
// prior (expected_duration_s as the median) blended with what completed jobs
// have shown, so the poll planner can place polls where completion is likely.
#pragma once

#include <cstddef>
#include <vector>

namespace klingd::core {

class duration_model {
public:
    explicit duration_model(double prior_median_s, double prior_sigma = 0.35);

    // A completed request's duration from submission to completion, in seconds.
    void add_sample(double seconds);
    void set_prior(double prior_median_s);

    double median() const;
    double sigma() const;
    // P(duration <= t).
    double cdf(double t) const;
    // The time by which a share p of requests is done; p in (0, 1).
    double quantile(double p) const;
    std::size_t samples() const { return count_; }

private:
    void refit();

    double prior_mu_;
    double prior_sigma_;
    std::vector<double> logs_; // ring of the most recent log-durations
    std::size_t next_ = 0;
    std::size_t count_ = 0;
    double mu_;
    double sigma_;
};

// Standard normal CDF and its inverse (|error| < 1.2e-9 for the inverse).
double normal_cdf(double z);
double normal_quantile(double p);

} // namespace klingd::core
