// splat_math.h: the per-Gaussian and per-pixel math of the splat rasterizer.
//
// Header-only, no dependencies. Every function is SPLAT_HD, which is
// `__host__ __device__` under nvcc and a plain inline under g++, so the CPU
// backend (rasterizer_cuda/cpu) and the CUDA backend include exactly the same
// math, and every CI run tests it on the CPU.
//
// Conventions (same as gsplat):
//   viewmat: 4x4 row-major world->camera (OpenCV: x right, y down, z forward)
//   K:       3x3 row-major pinhole intrinsics
//   quat:    (w, x, y, z), need not be normalised
//   conic:   (a, b, c) = upper triangle of the inverse 2D covariance
//   pixel centres at (x + 0.5, y + 0.5)
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define SPLAT_HD __host__ __device__ __forceinline__
#else
#define SPLAT_HD inline __attribute__((always_inline))
#endif

namespace splat {

// Compositing constants (original 3DGS values).
constexpr float kAlphaThreshold = 1.0f / 255.0f;  // alphas below this are skipped
constexpr float kMaxAlpha = 0.99f;                // alphas are clamped to this
constexpr float kTransmittanceEps = 1e-4f;        // a pixel stops when T would fall to this
constexpr float kMaxExtend = 3.33f;               // bounding-box half-size in standard deviations
constexpr float kMinQuatNorm2 = 1e-24f;           // |q|^2 below this (|q| < 1e-12, torch's normalize eps):
                                                  // the identity rotation, with zero gradient (gsplat's result)

// ------------------------------------------------------------------ small types
struct vec2 { float x, y; };
struct vec3 { float x, y, z; };
struct mat3 { float m[3][3]; };  // row-major

SPLAT_HD mat3 mul(const mat3& a, const mat3& b) {
    mat3 r;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            r.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
    return r;
}
SPLAT_HD mat3 transpose(const mat3& a) {
    mat3 r;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[j][i];
    return r;
}
SPLAT_HD mat3 add(const mat3& a, const mat3& b) {
    mat3 r;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[i][j] + b.m[i][j];
    return r;
}
SPLAT_HD vec3 mul(const mat3& a, const vec3& v) {
    return {a.m[0][0] * v.x + a.m[0][1] * v.y + a.m[0][2] * v.z,
            a.m[1][0] * v.x + a.m[1][1] * v.y + a.m[1][2] * v.z,
            a.m[2][0] * v.x + a.m[2][1] * v.y + a.m[2][2] * v.z};
}
SPLAT_HD vec3 mul_t(const mat3& a, const vec3& v) {  // a^T v
    return {a.m[0][0] * v.x + a.m[1][0] * v.y + a.m[2][0] * v.z,
            a.m[0][1] * v.x + a.m[1][1] * v.y + a.m[2][1] * v.z,
            a.m[0][2] * v.x + a.m[1][2] * v.y + a.m[2][2] * v.z};
}

// min/max as plain selects: they vectorise, where libm's fminf/fmaxf (with
// their NaN rules) become calls on the CPU.
SPLAT_HD float min_f(float a, float b) { return a < b ? a : b; }
SPLAT_HD float max_f(float a, float b) { return a > b ? a : b; }

// ------------------------------------------------------------------ exp
// exp(x) for the per-pixel loops. On the GPU the hardware approximation; on
// the CPU a branch-free Cephes-style polynomial (max rel. error ~2e-7 on
// [-87, 0]) that compilers vectorise, unlike libm's expf.
SPLAT_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
    return __expf(x);
#else
    x = min_f(max_f(x, -87.0f), 88.0f);
    // round to nearest with the 1.5 * 2^23 trick (no libm call, so it vectorises)
    float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    int32_t e = ((int32_t)fx + 127) << 23;
    return p * __builtin_bit_cast(float, e);
#endif
}

// ------------------------------------------------------------------ rotations
// Rotation matrix of a (not necessarily unit) quaternion (w, x, y, z).
// A degenerate quaternion (|q|^2 < kMinQuatNorm2, e.g. all zeros) is the identity.
SPLAT_HD mat3 quat_to_rotmat(const float q[4]) {
    float n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
    bool degenerate = n2 < kMinQuatNorm2;
    float n = degenerate ? 0.f : 1.f / sqrtf(n2);
    float w = degenerate ? 1.f : q[0] * n, x = q[1] * n, y = q[2] * n, z = q[3] * n;
    mat3 R;
    R.m[0][0] = 1.f - 2.f * (y * y + z * z);
    R.m[0][1] = 2.f * (x * y - w * z);
    R.m[0][2] = 2.f * (x * z + w * y);
    R.m[1][0] = 2.f * (x * y + w * z);
    R.m[1][1] = 1.f - 2.f * (x * x + z * z);
    R.m[1][2] = 2.f * (y * z - w * x);
    R.m[2][0] = 2.f * (x * z - w * y);
    R.m[2][1] = 2.f * (y * z + w * x);
    R.m[2][2] = 1.f - 2.f * (x * x + y * y);
    return R;
}

// Gradient of quat_to_rotmat: v_R -> v_q (for the raw, unnormalised quaternion).
// Zero for a degenerate quaternion (the identity does not depend on it).
SPLAT_HD void quat_to_rotmat_vjp(const float q[4], const mat3& v, float v_q[4]) {
    float n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
    if (n2 < kMinQuatNorm2) {
        v_q[0] = v_q[1] = v_q[2] = v_q[3] = 0.f;
        return;
    }
    float inv = 1.f / sqrtf(n2);
    float w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
    const float(*g)[3] = v.m;
    float vw = 2.f * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] + x * g[2][1]);
    float vx = 2.f * (y * g[0][1] + z * g[0][2] + y * g[1][0] - 2.f * x * g[1][1] - w * g[1][2] +
                      z * g[2][0] + w * g[2][1] - 2.f * x * g[2][2]);
    float vy = 2.f * (-2.f * y * g[0][0] + x * g[0][1] + w * g[0][2] + x * g[1][0] + z * g[1][2] -
                      w * g[2][0] + z * g[2][1] - 2.f * y * g[2][2]);
    float vz = 2.f * (-2.f * z * g[0][0] - w * g[0][1] + x * g[0][2] + w * g[1][0] - 2.f * z * g[1][1] +
                      y * g[1][2] + x * g[2][0] + y * g[2][1]);
    // through the normalisation q_n = q / |q|
    float dot = w * vw + x * vx + y * vy + z * vz;
    v_q[0] = (vw - w * dot) * inv;
    v_q[1] = (vx - x * dot) * inv;
    v_q[2] = (vy - y * dot) * inv;
    v_q[3] = (vz - z * dot) * inv;
}

// World-space covariance Sigma = (R S)(R S)^T.
SPLAT_HD mat3 quat_scale_to_covar(const float q[4], const float s[3]) {
    mat3 M = quat_to_rotmat(q);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) M.m[i][j] *= s[j];
    return mul(M, transpose(M));
}

SPLAT_HD void quat_scale_to_covar_vjp(const float q[4], const float s[3], const mat3& v_cov,
                                      float v_q[4], float v_s[3]) {
    mat3 R = quat_to_rotmat(q);
    mat3 M = R;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) M.m[i][j] *= s[j];
    // Sigma = M M^T  ->  v_M = (v + v^T) M
    mat3 v_M = mul(add(v_cov, transpose(v_cov)), M);
    mat3 v_R;
    for (int j = 0; j < 3; ++j) {
        v_s[j] = v_M.m[0][j] * R.m[0][j] + v_M.m[1][j] * R.m[1][j] + v_M.m[2][j] * R.m[2][j];
        for (int i = 0; i < 3; ++i) v_R.m[i][j] = v_M.m[i][j] * s[j];
    }
    quat_to_rotmat_vjp(q, v_R, v_q);
}

// ------------------------------------------------------------------ projection
struct Camera {
    mat3 R;           // world->camera rotation
    vec3 t;           // world->camera translation
    float fx, fy, cx, cy;
    int width, height;
};

SPLAT_HD Camera make_camera(const float* viewmat, const float* K, int width, int height) {
    Camera c;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) c.R.m[i][j] = viewmat[i * 4 + j];
    c.t = {viewmat[3], viewmat[7], viewmat[11]};
    c.fx = K[0];
    c.fy = K[4];
    c.cx = K[2];
    c.cy = K[5];
    c.width = width;
    c.height = height;
    return c;
}

// The frustum limits of the x/z and y/z slopes used to clamp the Jacobian
// (3DGS's 1.3 x FoV guard band).
struct SlopeLimits { float x_pos, x_neg, y_pos, y_neg; };
SPLAT_HD SlopeLimits slope_limits(const Camera& cam) {
    float tan_fovx = 0.5f * cam.width / cam.fx, tan_fovy = 0.5f * cam.height / cam.fy;
    return {(cam.width - cam.cx) / cam.fx + 0.3f * tan_fovx, cam.cx / cam.fx + 0.3f * tan_fovx,
            (cam.height - cam.cy) / cam.fy + 0.3f * tan_fovy, cam.cy / cam.fy + 0.3f * tan_fovy};
}

// Perspective (EWA) projection of a camera-space mean and covariance.
// cov2d is returned as (a, b, c) = ((0,0), (0,1), (1,1)).
SPLAT_HD void persp_proj(const Camera& cam, const vec3& p, const mat3& cov, vec2& mean2d, float cov2d[3]) {
    SlopeLimits lim = slope_limits(cam);
    float rz = 1.f / p.z, rz2 = rz * rz;
    float tx = p.z * fminf(lim.x_pos, fmaxf(-lim.x_neg, p.x * rz));
    float ty = p.z * fminf(lim.y_pos, fmaxf(-lim.y_neg, p.y * rz));
    // J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]
    float j00 = cam.fx * rz, j02 = -cam.fx * tx * rz2, j11 = cam.fy * rz, j12 = -cam.fy * ty * rz2;
    // T = J cov (2x3)
    float t0[3], t1[3];
    for (int k = 0; k < 3; ++k) {
        t0[k] = j00 * cov.m[0][k] + j02 * cov.m[2][k];
        t1[k] = j11 * cov.m[1][k] + j12 * cov.m[2][k];
    }
    cov2d[0] = t0[0] * j00 + t0[2] * j02;
    cov2d[1] = t0[1] * j11 + t0[2] * j12;
    cov2d[2] = t1[1] * j11 + t1[2] * j12;
    mean2d.x = cam.fx * p.x * rz + cam.cx;
    mean2d.y = cam.fy * p.y * rz + cam.cy;
}

// Gradient of persp_proj. v_cov2d holds the gradient of the symmetric 2x2
// matrix as (v00, v01 + v10, v11), i.e. per stored entry (a, b, c).
SPLAT_HD void persp_proj_vjp(const Camera& cam, const vec3& p, const mat3& cov, const vec2& v_mean2d,
                             const float v_cov2d[3], vec3& v_p, mat3& v_cov) {
    SlopeLimits lim = slope_limits(cam);
    float rz = 1.f / p.z, rz2 = rz * rz, rz3 = rz2 * rz;
    float sx = p.x * rz, sy = p.y * rz;
    float tx = p.z * fminf(lim.x_pos, fmaxf(-lim.x_neg, sx));
    float ty = p.z * fminf(lim.y_pos, fmaxf(-lim.y_neg, sy));
    float J[2][3] = {{cam.fx * rz, 0.f, -cam.fx * tx * rz2}, {0.f, cam.fy * rz, -cam.fy * ty * rz2}};
    // symmetric gradient matrix G of the 2x2 covariance
    float G[2][2] = {{v_cov2d[0], 0.5f * v_cov2d[1]}, {0.5f * v_cov2d[1], v_cov2d[2]}};
    // v_cov = J^T G J
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            float s = 0.f;
            for (int a = 0; a < 2; ++a)
                for (int b = 0; b < 2; ++b) s += J[a][i] * G[a][b] * J[b][j];
            v_cov.m[i][j] = s;
        }
    // v_J = 2 G J cov  (G and cov symmetric)
    float v_J[2][3];
    for (int a = 0; a < 2; ++a)
        for (int j = 0; j < 3; ++j) {
            float s = 0.f;
            for (int b = 0; b < 2; ++b)
                for (int k = 0; k < 3; ++k) s += G[a][b] * J[b][k] * cov.m[k][j];
            v_J[a][j] = 2.f * s;
        }
    v_p.x = cam.fx * rz * v_mean2d.x;
    v_p.y = cam.fy * rz * v_mean2d.y;
    v_p.z = -(cam.fx * p.x * v_mean2d.x + cam.fy * p.y * v_mean2d.y) * rz2;
    // J00 = fx/z, J11 = fy/z
    v_p.z += -cam.fx * rz2 * v_J[0][0] - cam.fy * rz2 * v_J[1][1];
    // J02 = -fx tx / z^2 with tx = x (inside the guard band) or z * limit (clamped)
    if (sx <= lim.x_pos && sx >= -lim.x_neg) {
        v_p.x += -cam.fx * rz2 * v_J[0][2];
        v_p.z += 2.f * cam.fx * tx * rz3 * v_J[0][2];
    } else {
        v_p.z += cam.fx * tx * rz3 * v_J[0][2];
    }
    if (sy <= lim.y_pos && sy >= -lim.y_neg) {
        v_p.y += -cam.fy * rz2 * v_J[1][2];
        v_p.z += 2.f * cam.fy * ty * rz3 * v_J[1][2];
    } else {
        v_p.z += cam.fy * ty * rz3 * v_J[1][2];
    }
}

struct Projected {
    bool valid;
    vec2 mean2d;
    float depth;
    float conic[3];
    float compensation;  // sqrt(det(cov2d) / det(cov2d + eps I)), for antialiasing
    int radius_x, radius_y;
};

// Full per-Gaussian projection: world->camera, EWA, low-pass blur eps2d,
// conic, compensation and the opacity-aware tight bounding box.
// `opacity` < 0 means "unknown" (plain 3.33 sigma box).
SPLAT_HD Projected project_gaussian(const Camera& cam, const float mean[3], const float q[4], const float s[3],
                                    float opacity, float eps2d, float near_plane, float far_plane,
                                    float radius_clip, bool antialiased) {
    Projected out;
    out.valid = false;
    out.radius_x = out.radius_y = 0;
    vec3 m = {mean[0], mean[1], mean[2]};
    vec3 p = mul(cam.R, m);
    p.x += cam.t.x;
    p.y += cam.t.y;
    p.z += cam.t.z;
    if (!(p.z >= near_plane && p.z <= far_plane)) return out;  // also rejects NaN
    mat3 cov = quat_scale_to_covar(q, s);
    mat3 cov_c = mul(mul(cam.R, cov), transpose(cam.R));
    float c2[3];
    persp_proj(cam, p, cov_c, out.mean2d, c2);
    float det_orig = c2[0] * c2[2] - c2[1] * c2[1];
    c2[0] += eps2d;
    c2[2] += eps2d;
    float det = c2[0] * c2[2] - c2[1] * c2[1];
    if (!(det > 0.f)) return out;
    out.compensation = sqrtf(fmaxf(0.f, det_orig / det));
    float inv_det = 1.f / det;
    out.conic[0] = c2[2] * inv_det;
    out.conic[1] = -c2[1] * inv_det;
    out.conic[2] = c2[0] * inv_det;
    float extend = kMaxExtend;
    if (opacity >= 0.f) {
        float op = antialiased ? opacity * out.compensation : opacity;
        if (op < kAlphaThreshold) return out;
        extend = fminf(extend, sqrtf(2.f * logf(op / kAlphaThreshold)));
    }
    float rx = ceilf(extend * sqrtf(c2[0])), ry = ceilf(extend * sqrtf(c2[2]));
    if (rx <= radius_clip && ry <= radius_clip) return out;
    if (out.mean2d.x + rx <= 0.f || out.mean2d.x - rx >= cam.width || out.mean2d.y + ry <= 0.f ||
        out.mean2d.y - ry >= cam.height)
        return out;
    out.valid = true;
    out.radius_x = (int)rx;
    out.radius_y = (int)ry;
    out.depth = p.z;
    return out;
}

// Writes entry idx of the projection outputs: radii [.., 2], means2d [.., 2],
// depths, conics [.., 3], compensations; zeros for a culled Gaussian.
SPLAT_HD void store_projection(const Projected& p, int64_t idx, int32_t* radii, float* means2d, float* depths,
                               float* conics, float* compensations) {
    const bool v = p.valid;
    radii[2 * idx] = v ? p.radius_x : 0;
    radii[2 * idx + 1] = v ? p.radius_y : 0;
    means2d[2 * idx] = v ? p.mean2d.x : 0.f;
    means2d[2 * idx + 1] = v ? p.mean2d.y : 0.f;
    depths[idx] = v ? p.depth : 0.f;
    for (int k = 0; k < 3; ++k) conics[3 * idx + k] = v ? p.conic[k] : 0.f;
    compensations[idx] = v ? p.compensation : 0.f;
}

struct ProjectionGrad {
    float v_mean[3];
    float v_quat[4];
    float v_scale[3];
    mat3 v_R;    // gradient for the camera rotation
    vec3 v_t;    // gradient for the camera translation
};

// Gradient of project_gaussian for a valid Gaussian given the gradients of
// its 2D mean, depth, conic (a, b, c) and compensation.
SPLAT_HD ProjectionGrad project_gaussian_vjp(const Camera& cam, const float mean[3], const float q[4],
                                             const float s[3], float eps2d, bool antialiased,
                                             const float v_mean2d[2], float v_depth, const float v_conic[3],
                                             float v_compensation) {
    vec3 m = {mean[0], mean[1], mean[2]};
    vec3 p = mul(cam.R, m);
    p.x += cam.t.x;
    p.y += cam.t.y;
    p.z += cam.t.z;
    mat3 cov = quat_scale_to_covar(q, s);
    mat3 RC = mul(cam.R, cov);
    mat3 cov_c = mul(RC, transpose(cam.R));
    vec2 mean2d;
    float c2[3];
    persp_proj(cam, p, cov_c, mean2d, c2);
    float det_orig = c2[0] * c2[2] - c2[1] * c2[1];
    float a = c2[0] + eps2d, b = c2[1], c = c2[2] + eps2d;
    float det = a * c - b * b;
    float inv_det = 1.f / det;
    float ca = c * inv_det, cb = -b * inv_det, cc = a * inv_det;  // conic
    // conic = inverse(cov2d): v_cov2d = -conic G conic with G = [[va, vb/2], [vb/2, vc]]
    float G00 = v_conic[0], G01 = 0.5f * v_conic[1], G11 = v_conic[2];
    // X = conic * G * conic (symmetric)
    float t00 = ca * G00 + cb * G01, t01 = ca * G01 + cb * G11;
    float t10 = cb * G00 + cc * G01, t11 = cb * G01 + cc * G11;
    float X00 = t00 * ca + t01 * cb, X01 = t00 * cb + t01 * cc, X11 = t10 * cb + t11 * cc;
    // per stored entry (a, b, c): b appears twice in the matrix
    float v_c2[3] = {-X00, -2.f * X01, -X11};
    if (antialiased && v_compensation != 0.f) {
        // comp = sqrt(det_orig / det), det_orig = (a-e)(c-e) - b^2, det = ac - b^2
        float comp2 = det_orig * inv_det;
        float comp = sqrtf(fmaxf(0.f, comp2));
        if (comp > 0.f) {
            float k = v_compensation * 0.5f / comp * inv_det;
            v_c2[0] += k * ((c - eps2d) - comp2 * c);
            v_c2[2] += k * ((a - eps2d) - comp2 * a);
            v_c2[1] += k * (-2.f * b + comp2 * 2.f * b);
        }
    }
    vec3 v_p;
    mat3 v_cov_c;
    vec2 vm = {v_mean2d[0], v_mean2d[1]};
    persp_proj_vjp(cam, p, cov_c, vm, v_c2, v_p, v_cov_c);
    v_p.z += v_depth;
    ProjectionGrad g;
    // p = R m + t
    vec3 vmean = mul_t(cam.R, v_p);
    g.v_mean[0] = vmean.x;
    g.v_mean[1] = vmean.y;
    g.v_mean[2] = vmean.z;
    g.v_t = v_p;
    // cov_c = R cov R^T: v_cov = R^T v_cov_c R, v_R = v_cov_c R cov^T + v_cov_c^T R cov
    mat3 v_cov = mul(mul(transpose(cam.R), v_cov_c), cam.R);
    // cov symmetric, so R cov^T = R cov = RC
    g.v_R = add(mul(v_cov_c, RC), mul(transpose(v_cov_c), RC));
    // p = R m + t: v_R += v_p m^T
    const float vp[3] = {v_p.x, v_p.y, v_p.z};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) g.v_R.m[i][j] += vp[i] * mean[j];
    quat_scale_to_covar_vjp(q, s, v_cov, g.v_quat, g.v_scale);
    return g;
}

// ------------------------------------------------------------------ spherical harmonics
// Real SH bases up to degree 3 (the 3DGS / gsplat constants and ordering).
constexpr float kSH0 = 0.2820947917738781f;
constexpr float kSH1 = 0.48860251190292f;

// colour = sum_k basis_k(dir) * coeffs[k], dir need not be normalised.
// coeffs: K x 3 contiguous. Writes 3 floats.
SPLAT_HD void sh_basis(int degree, float x, float y, float z, float b[16]) {
    b[0] = kSH0;
    if (degree < 1) return;
    b[1] = -kSH1 * y;
    b[2] = kSH1 * z;
    b[3] = -kSH1 * x;
    if (degree < 2) return;
    float z2 = z * z;
    float fTmpB = -1.092548430592079f * z;
    float fC1 = x * x - y * y, fS1 = 2.f * x * y;
    b[6] = 0.9461746957575601f * z2 - 0.3153915652525201f;
    b[7] = fTmpB * x;
    b[5] = fTmpB * y;
    b[8] = 0.5462742152960395f * fC1;
    b[4] = 0.5462742152960395f * fS1;
    if (degree < 3) return;
    float fTmpC = -2.285228997322329f * z2 + 0.4570457994644658f;
    float fTmpB3 = 1.445305721320277f * z;
    float fC2 = x * fC1 - y * fS1, fS2 = x * fS1 + y * fC1;
    b[12] = z * (1.865881662950577f * z2 - 1.119528997770346f);
    b[13] = fTmpC * x;
    b[11] = fTmpC * y;
    b[14] = fTmpB3 * fC1;
    b[10] = fTmpB3 * fS1;
    b[15] = -0.5900435899266435f * fC2;
    b[9] = -0.5900435899266435f * fS2;
}

// d basis_k / d (x, y, z) for a unit direction, k < (degree+1)^2.
SPLAT_HD void sh_basis_grad(int degree, float x, float y, float z, float dx[16], float dy[16], float dz[16]) {
    for (int k = 0; k < 16; ++k) dx[k] = dy[k] = dz[k] = 0.f;
    if (degree < 1) return;
    dy[1] = -kSH1;
    dz[2] = kSH1;
    dx[3] = -kSH1;
    if (degree < 2) return;
    float z2 = z * z;
    const float c6 = 0.9461746957575601f, cB = -1.092548430592079f, cA = 0.5462742152960395f;
    // b6 = c6 z^2 - k; b7 = cB z x; b5 = cB z y; b8 = cA (x^2 - y^2); b4 = cA 2xy
    dz[6] = 2.f * c6 * z;
    dx[7] = cB * z; dz[7] = cB * x;
    dy[5] = cB * z; dz[5] = cB * y;
    dx[8] = 2.f * cA * x; dy[8] = -2.f * cA * y;
    dx[4] = 2.f * cA * y; dy[4] = 2.f * cA * x;
    if (degree < 3) return;
    float fC1 = x * x - y * y, fS1 = 2.f * x * y;
    // d fC1 = (2x, -2y, 0); d fS1 = (2y, 2x, 0)
    float dC2x = fC1 + x * 2.f * x - y * 2.f * y, dC2y = x * (-2.f * y) - fS1 - y * 2.f * x;
    float dS2x = fS1 + x * 2.f * y + y * 2.f * x, dS2y = x * 2.f * x + fC1 + y * (-2.f * y);
    const float c12a = 1.865881662950577f, c12b = -1.119528997770346f;
    const float cCa = -2.285228997322329f, cCb = 0.4570457994644658f;
    const float cB3 = 1.445305721320277f, cA3 = -0.5900435899266435f;
    float fTmpC = cCa * z2 + cCb;
    // b12 = z (c12a z^2 + c12b)
    dz[12] = 3.f * c12a * z2 + c12b;
    // b13 = fTmpC x ; b11 = fTmpC y
    dx[13] = fTmpC; dz[13] = 2.f * cCa * z * x;
    dy[11] = fTmpC; dz[11] = 2.f * cCa * z * y;
    // b14 = cB3 z fC1 ; b10 = cB3 z fS1
    dx[14] = cB3 * z * 2.f * x; dy[14] = cB3 * z * (-2.f * y); dz[14] = cB3 * fC1;
    dx[10] = cB3 * z * 2.f * y; dy[10] = cB3 * z * 2.f * x; dz[10] = cB3 * fS1;
    // b15 = cA3 fC2 ; b9 = cA3 fS2
    dx[15] = cA3 * dC2x; dy[15] = cA3 * dC2y;
    dx[9] = cA3 * dS2x; dy[9] = cA3 * dS2y;
}

// Colour of one Gaussian's SH coefficients `co` (K x 3, K >= (degree+1)^2)
// seen along `d` (camera -> Gaussian, any length): out = sum_k basis_k(d/|d|) co_k.
SPLAT_HD void sh_color(int degree, const float* co, const float d[3], float out[3]) {
    const int nb = (degree + 1) * (degree + 1);
    float len = sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    float inv = 1.f / fmaxf(len, 1e-12f);
    float b[16];
    sh_basis(degree, d[0] * inv, d[1] * inv, d[2] * inv, b);
    float r = 0.f, g = 0.f, bl = 0.f;
    for (int k = 0; k < nb; ++k) {
        r += b[k] * co[3 * k];
        g += b[k] * co[3 * k + 1];
        bl += b[k] * co[3 * k + 2];
    }
    out[0] = r;
    out[1] = g;
    out[2] = bl;
}

// Gradient of sh_color: adds to v_co (same layout as co) and, when v_d is not
// null, writes the gradient of the direction into v_d.
SPLAT_HD void sh_color_vjp(int degree, const float* co, const float d[3], const float v_out[3], float* v_co,
                           float* v_d) {
    const int nb = (degree + 1) * (degree + 1);
    float len = sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    float inv = 1.f / fmaxf(len, 1e-12f);
    float x = d[0] * inv, y = d[1] * inv, z = d[2] * inv;
    float b[16];
    sh_basis(degree, x, y, z, b);
    for (int k = 0; k < nb; ++k) {
        v_co[3 * k] += b[k] * v_out[0];
        v_co[3 * k + 1] += b[k] * v_out[1];
        v_co[3 * k + 2] += b[k] * v_out[2];
    }
    if (!v_d) return;
    float gx[16], gy[16], gz[16];
    sh_basis_grad(degree, x, y, z, gx, gy, gz);
    float vx = 0.f, vy = 0.f, vz = 0.f;
    for (int k = 1; k < nb; ++k) {
        float dot = co[3 * k] * v_out[0] + co[3 * k + 1] * v_out[1] + co[3 * k + 2] * v_out[2];
        vx += gx[k] * dot;
        vy += gy[k] * dot;
        vz += gz[k] * dot;
    }
    // through the normalisation u = d / |d|
    float ud = x * vx + y * vy + z * vz;
    v_d[0] = (vx - x * ud) * inv;
    v_d[1] = (vy - y * ud) * inv;
    v_d[2] = (vz - z * ud) * inv;
}

// ------------------------------------------------------------------ tiles
// The tiles [x0, x1) x [y0, y1) that a Gaussian's bounding box (centre m,
// half-sizes rx, ry in pixels) overlaps, clamped to the tw x th grid.
struct TileRect { int x0, x1, y0, y1; };
SPLAT_HD int clamp_to_grid(float v, int n) { return (int)min_f(max_f(v, 0.f), (float)n); }
SPLAT_HD TileRect tile_rect(float mx, float my, int rx, int ry, int tile_size, int tw, int th) {
    float fx = mx / tile_size, fy = my / tile_size;
    float frx = (float)rx / tile_size, fry = (float)ry / tile_size;
    return {clamp_to_grid(floorf(fx - frx), tw), clamp_to_grid(ceilf(fx + frx), tw),
            clamp_to_grid(floorf(fy - fry), th), clamp_to_grid(ceilf(fy + fry), th)};
}

SPLAT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

// Number of bits needed to hold v (0 for v <= 0).
SPLAT_HD int bit_length(int64_t v) {
    int b = 0;
    while (v > 0) {
        ++b;
        v >>= 1;
    }
    return b;
}

// gsplat's 64-bit intersection key: camera | tile | depth. Depths are
// positive (beyond the near plane), so their IEEE bits sort like the values,
// and sorting the keys orders by camera, then tile, then depth.
SPLAT_HD int64_t isect_key(int64_t camera, int64_t tile, float depth, int tile_bits) {
    return (int64_t)(((uint64_t)camera << (32 + tile_bits)) | ((uint64_t)tile << 32) | (uint64_t)float_bits(depth));
}

// The flat tile index (camera * n_tiles + tile) of an intersection key.
SPLAT_HD int64_t isect_key_flat_tile(int64_t key, int tile_bits, int64_t n_tiles) {
    uint64_t k = (uint64_t)key >> 32;
    return (int64_t)(k >> tile_bits) * n_tiles + (int64_t)(k & ((1ull << tile_bits) - 1));
}

// The tile-intersection steps of the CUDA backend, per Gaussian and per
// intersection (the CPU backend bins differently; tests run these on the host
// against it).
//
// Number of tiles of rectangle r (camera c) that take part: all, or those set
// in tile_mask [C * n_tiles].
SPLAT_HD int count_isects(const TileRect& r, int64_t c, int64_t n_tiles, int tw, const uint8_t* tile_mask) {
    if (!tile_mask) return (r.x1 - r.x0) * (r.y1 - r.y0);
    int cnt = 0;
    for (int ty = r.y0; ty < r.y1; ++ty)
        for (int tx = r.x0; tx < r.x1; ++tx) cnt += tile_mask[c * n_tiles + (int64_t)ty * tw + tx] ? 1 : 0;
    return cnt;
}

// Writes Gaussian `idx`'s (key, id) pairs from `slot` on, in tile order.
SPLAT_HD void emit_isects(const TileRect& r, int64_t c, int64_t idx, float depth, int64_t n_tiles, int tw,
                          int tile_bits, const uint8_t* tile_mask, int64_t slot, int64_t* keys, int32_t* ids) {
    for (int ty = r.y0; ty < r.y1; ++ty)
        for (int tx = r.x0; tx < r.x1; ++tx) {
            const int64_t tile = (int64_t)ty * tw + tx;
            if (tile_mask && !tile_mask[c * n_tiles + tile]) continue;
            keys[slot] = isect_key(c, tile, depth, tile_bits);
            ids[slot] = (int32_t)idx;
            ++slot;
        }
}

// For the i-th of M sorted keys: fills offsets[t] = i for the flat tiles t
// after key i-1's tile up to key i's (and offsets[t] = M after the last key's
// tile, up to offsets[T]). Run for every i, this gives each of the T flat
// tiles its first intersection, with offsets[T] = M.
SPLAT_HD void tile_offsets_at(int64_t i, int64_t M, const int64_t* keys, int tile_bits, int64_t n_tiles, int64_t T,
                              int64_t* offsets) {
    const int64_t cur = isect_key_flat_tile(keys[i], tile_bits, n_tiles);
    const int64_t prev = i == 0 ? -1 : isect_key_flat_tile(keys[i - 1], tile_bits, n_tiles);
    for (int64_t t = prev + 1; t <= cur; ++t) offsets[t] = i;
    if (i == M - 1)
        for (int64_t t = cur + 1; t <= T; ++t) offsets[t] = M;
}

// ------------------------------------------------------------------ per pixel
// Gaussian exponent at pixel offset (dx, dy) = mean - pixel.
SPLAT_HD float gaussian_sigma(float a, float b, float c, float dx, float dy) {
    return 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;
}

// alpha of a Gaussian at a pixel, unclamped and clamped to kMaxAlpha.
SPLAT_HD float gaussian_raw_alpha(float opacity, float sigma) { return opacity * fast_exp(-sigma); }
SPLAT_HD float clamp_alpha(float raw_alpha) { return min_f(kMaxAlpha, raw_alpha); }

// Does a pair take part in compositing? Tested on the unclamped alpha (the
// same answer as on the clamped one, since kAlphaThreshold < kMaxAlpha, but
// GCC only vectorises this form). 1 or 0 as a 32-bit int, so that CPU loops
// keep every SIMD lane the width of a float (bool masks stop GCC too).
SPLAT_HD int32_t alpha_contributes(float sigma, float raw_alpha) {
    return (sigma >= 0.f ? 1 : 0) & (raw_alpha >= kAlphaThreshold ? 1 : 0);
}

// The rows [begin, end) of a tile of `rows` pixel rows, whose first row has pixel
// centres at y = y0 + 0.5, on which a Gaussian (conic a, b, c; mean y `my`;
// opacity) can take part in compositing: alpha >= kAlphaThreshold needs
// sigma <= L = ln(opacity / kAlphaThreshold), and on the ellipse sigma = L the
// largest |dy| is sqrt(2 L Sigma_yy) with Sigma_yy = a / (a c - b^2) (the 2D
// covariance is the conic's inverse). Conservative (a small margin covers
// rounding and fast_exp's error), so a loop over these rows only gives the
// results of a loop over all of them. Not an ellipse (or NaN): every row;
// opacity <= kAlphaThreshold: none. The CPU kernels use it to skip the rows of
// a tile a Gaussian cannot reach (pixels are the SIMD lanes, a row a run of them).
struct RowSpan { int begin, end; };
SPLAT_HD RowSpan alpha_row_span(float a, float b, float c, float my, float opacity, int y0, int rows) {
    RowSpan all{0, rows}, none{0, 0};
    const float det = a * c - b * b;
    if (!(a > 0.f && det > 0.f)) return all;
    const float L = logf(opacity * (1.f + 1e-5f) / kAlphaThreshold);
    if (!(L > 0.f)) return opacity == opacity ? none : all;
    const float ey = sqrtf(2.f * L * a / det) * (1.f + 1e-4f) + 1e-3f;
    const float centre = my - (y0 + 0.5f);
    const float lo = min_f(max_f(centre - ey, -1.f), (float)rows + 1.f);
    const float hi = min_f(max_f(centre + ey, -1.f), (float)rows + 1.f);
    RowSpan r{(int)ceilf(lo), (int)floorf(hi) + 1};
    r.begin = r.begin < 0 ? 0 : r.begin;
    r.end = r.end > rows ? rows : r.end;
    if (!(r.end > r.begin)) return none;
    return r;
}

// Gradient of alpha = min(kMaxAlpha, opacity * exp(-sigma(mean - pixel))) for a
// contributing pair, given v_alpha. `vis` = exp(-sigma). The clamp passes no
// gradient above kMaxAlpha, as in the reference. Returned by value (no references), so that
// CPU loops calling it still vectorise.
struct AlphaGrad { float v_a, v_b, v_c, v_mx, v_my, v_opacity; };
SPLAT_HD AlphaGrad gaussian_alpha_vjp(float opacity, float vis, float a, float b, float c, float dx, float dy,
                                      float v_alpha) {
    float open = opacity * vis <= kMaxAlpha ? 1.f : 0.f;  // 0 where the clamp holds (passes at equality, as torch's
                                                          // clamp and gsplat's backward do)
    float v_sigma = -open * opacity * vis * v_alpha;
    AlphaGrad g;
    g.v_a = 0.5f * v_sigma * dx * dx;
    g.v_b = v_sigma * dx * dy;
    g.v_c = 0.5f * v_sigma * dy * dy;
    g.v_mx = v_sigma * (a * dx + b * dy);
    g.v_my = v_sigma * (b * dx + c * dy);
    g.v_opacity = open * vis * v_alpha;
    return g;
}

// One (pixel, Gaussian) pair of the backward pass, which walks a pixel's
// Gaussians back to front. With C = sum_k w_k c_k + T_final bg and
// alpha_out = 1 - T_final, for the Gaussian with alpha (from `opacity` and
// `vis` = exp(-sigma)):
//   T_behind    transmittance just behind it (T_final for the last one)
//   color_dot   its colour . dL/dC
//   behind_dot  sum over the Gaussians behind it of w_k (c_k . dL/dC)
//   v_alpha_px  dL/dalpha_out - bg . dL/dC (the same for every Gaussian of the pixel)
// Returns its blend weight w = alpha T_front, the transmittance in front of it
// (the next pair's T_behind) and the gradients of alpha's inputs; the caller
// adds w * dL/dC to the colour gradient and w * color_dot to behind_dot.
struct PairGrad {
    float weight, T_front;
    AlphaGrad g;
};
SPLAT_HD PairGrad composite_backward_pair(float opacity, float vis, float a, float b, float c, float dx, float dy,
                                          float T_behind, float T_final, float color_dot, float behind_dot,
                                          float v_alpha_px) {
    float alpha = clamp_alpha(opacity * vis);
    float ra = 1.f / (1.f - alpha);
    PairGrad r;
    r.T_front = T_behind * ra;
    r.weight = alpha * r.T_front;
    // dC/dalpha = T_front c - (colour behind) / (1 - alpha); d alpha_out / dalpha = T_final / (1 - alpha),
    // and the background term of C moves with -T_final / (1 - alpha)
    float v_alpha = r.T_front * color_dot - behind_dot * ra + T_final * ra * v_alpha_px;
    r.g = gaussian_alpha_vjp(opacity, vis, a, b, c, dx, dy, v_alpha);
    return r;
}

// ------------------------------------------------------------------ forward mode (JVP)
// Tangent of alpha = min(kMaxAlpha, opacity * exp(-sigma(mean - pixel))) for a
// contributing pair, given the tangents of its inputs (conic a, b, c, mean x, y,
// opacity): the forward-mode twin of gaussian_alpha_vjp (same clamp rule).
SPLAT_HD float gaussian_alpha_jvp(float opacity, float vis, float a, float b, float c, float dx, float dy, float t_a,
                                  float t_b, float t_c, float t_mx, float t_my, float t_opacity) {
    float open = opacity * vis <= kMaxAlpha ? 1.f : 0.f;
    float t_sigma = 0.5f * (t_a * dx * dx + t_c * dy * dy) + t_b * dx * dy + (a * dx + b * dy) * t_mx +
                    (b * dx + c * dy) * t_my;
    return open * vis * (t_opacity - opacity * t_sigma);
}

// One (pixel, Gaussian) pair of the forward-mode pass, front to back, for a pair
// the forward takes: with the transmittance T in front of it and its tangent t_T,
// alpha and t_alpha, the blend weight w = alpha T has the tangent
// t_w = t_alpha T + alpha t_T (the caller adds t_w c + w t_c to the colour's
// tangent), and the transmittance behind it, T (1 - alpha), has the tangent
// t_T (1 - alpha) - T t_alpha.
struct PairTangent { float w, t_w, T_next, t_T_next; };
SPLAT_HD PairTangent composite_jvp_pair(float alpha, float t_alpha, float T, float t_T) {
    PairTangent r;
    r.w = alpha * T;
    r.t_w = t_alpha * T + alpha * t_T;
    r.T_next = T * (1.f - alpha);
    r.t_T_next = t_T * (1.f - alpha) - T * t_alpha;
    return r;
}

}  // namespace splat
