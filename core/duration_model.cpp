// Log-normal fit with a prior worth a few samples, over a bounded ring of samples.
// The ring is long (2,048) because under a scarce budget polls go where the fit
// says, so what is learned depends on the fit: a short memory made that loop swing.
// Refits come every 8 samples once 64 are in (the fit moves little per sample).
#include "core/duration_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace klingd::core {

namespace {
constexpr double prior_weight = 5; // the prior counts as this many samples
constexpr double min_sigma = 0.05;
constexpr double max_sigma = 1.5;
} // namespace

double normal_cdf(double z) {
    return 0.5 * std::erfc(-z / std::sqrt(2.0));
}

// Acklam's rational approximation, refined by one Halley step.
double normal_quantile(double p) {
    p = std::clamp(p, 1e-12, 1 - 1e-12);
    static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                                   -2.759285104469687e+02, 1.383577518672690e+02,
                                   -3.066479806614716e+01, 2.506628277459239e+00};
    static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                                   -1.556989798598866e+02, 6.680131188771972e+01,
                                   -1.328068155288572e+01};
    static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                                   -2.400758277161838e+00, -2.549732539343734e+00,
                                   4.374664141464968e+00,  2.938163982698783e+00};
    static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01,
                                   2.445134137142996e+00, 3.754408661907416e+00};
    constexpr double lo = 0.02425;
    double x;
    if (p < lo) {
        double q = std::sqrt(-2 * std::log(p));
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    } else if (p <= 1 - lo) {
        double q = p - 0.5, r = q * q;
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
    } else {
        double q = std::sqrt(-2 * std::log(1 - p));
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    double e = normal_cdf(x) - p;
    double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
    return x - u / (1 + x * u / 2);
}

duration_model::duration_model(double prior_median_s, double prior_sigma)
    : prior_mu_(std::log(std::max(prior_median_s, 1e-3))), prior_sigma_(prior_sigma),
      mu_(prior_mu_), sigma_(prior_sigma) {}

void duration_model::set_prior(double prior_median_s) {
    prior_mu_ = std::log(std::max(prior_median_s, 1e-3));
    refit();
}

void duration_model::fit() {
    refit();
}

void duration_model::add_sample(double seconds) {
    add_interval(seconds, seconds);
}

void duration_model::add_interval(double lo, double hi) {
    if (!(hi > 0) || !std::isfinite(hi) || !(lo <= hi) || !std::isfinite(lo))
        return;
    interval iv{lo > 0 ? std::log(lo) : -std::numeric_limits<double>::infinity(), std::log(hi)};
    if (logs_.size() < ring_size) {
        logs_.push_back(iv);
    } else {
        logs_[next_] = iv;
    }
    next_ = (next_ + 1) % ring_size;
    ++count_;
    if (count_ <= 64 || count_ % 8 == 0)
        refit();
}

namespace {
double std_normal_pdf(double z) {
    return std::isinf(z) ? 0.0 : std::exp(-z * z / 2) / std::sqrt(2 * M_PI);
}

// Mean and second moment of a normal(mu, sigma) restricted to (a, b]; a may be -infinity.
void truncated_moments(double mu, double sigma, double a, double b, double& m1, double& m2) {
    if (!(b - a > 1e-9)) {
        m1 = b;
        m2 = b * b;
        return;
    }
    double za = std::isinf(a) ? -std::numeric_limits<double>::infinity() : (a - mu) / sigma;
    double zb = (b - mu) / sigma;
    double mass = normal_cdf(zb) - (std::isinf(za) ? 0.0 : normal_cdf(za));
    if (mass < 1e-12) {
        // Far out in a tail: the nearer end stands for the interval.
        double x = std::isinf(a) || std::abs(zb) < std::abs(za) ? b : a;
        m1 = x;
        m2 = x * x;
        return;
    }
    double pa = std_normal_pdf(za), pb = std_normal_pdf(zb);
    double za_pa = std::isinf(za) ? 0.0 : za * pa;
    double mean_z = (pa - pb) / mass;
    double var_z = std::max(0.0, 1 + (za_pa - zb * pb) / mass - mean_z * mean_z);
    m1 = mu + sigma * mean_z;
    m2 = sigma * sigma * var_z + m1 * m1;
}
} // namespace

void duration_model::refit() {
    double n = static_cast<double>(logs_.size());
    if (n == 0) {
        mu_ = prior_mu_;
        sigma_ = prior_sigma_;
        return;
    }
    // EM: each interval stands for the expected log-duration (and its square) of a
    // duration inside it under the current fit; the prior counts as prior_weight samples.
    double mu = mu_, sigma = std::clamp(sigma_, min_sigma, max_sigma);
    for (int round = 0; round < 8; ++round) {
        double s1 = 0, s2 = 0;
        for (const auto& iv : logs_) {
            double m1, m2;
            truncated_moments(mu, sigma, iv.lo, iv.hi, m1, m2);
            s1 += m1;
            s2 += m2;
        }
        double mean = s1 / n;
        double var =
            n > 1 ? std::max(0.0, s2 / n - mean * mean) * n / (n - 1) : prior_sigma_ * prior_sigma_;
        double next_mu = (prior_weight * prior_mu_ + n * mean) / (prior_weight + n);
        // the prior's spread plus the disagreement between prior and data
        double prior_var =
            prior_sigma_ * prior_sigma_ + (prior_mu_ - next_mu) * (prior_mu_ - next_mu);
        double v = (prior_weight * prior_var + n * var) / (prior_weight + n);
        double next_sigma = std::clamp(std::sqrt(v), min_sigma, max_sigma);
        bool settled = std::abs(next_mu - mu) < 1e-4 && std::abs(next_sigma - sigma) < 1e-4;
        mu = next_mu;
        sigma = next_sigma;
        if (settled)
            break;
    }
    mu_ = mu;
    sigma_ = sigma;
}

double duration_model::prior_share() const {
    return prior_weight / (prior_weight + static_cast<double>(logs_.size()));
}

double duration_model::median() const {
    return std::exp(mu_);
}
double duration_model::sigma() const {
    return sigma_;
}

double duration_model::cdf(double t) const {
    if (t <= 0)
        return 0;
    return normal_cdf((std::log(t) - mu_) / sigma_);
}

double duration_model::quantile(double p) const {
    return std::exp(mu_ + sigma_ * normal_quantile(p));
}

} // namespace klingd::core
