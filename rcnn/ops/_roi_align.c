/* RoIAlign in C, float32, for when no gradient of the boxes is wanted (detection, and training
 * with the proposals held constant): the kernel rcnn/ops/roi_align.py describes (torchvision's)
 * and its transpose, the gradient of the map. The PyTorch path builds every sample's taps as
 * index tensors, which for the hundred RoIs of an image costs more in Python and dispatch than
 * in arithmetic; here each RoI's sample rows and columns are worked out once (sampling a
 * regular grid bilinearly is separable), and each sample's four taps are read into (or spread
 * from) its bin's C values by loops the compiler vectorises.
 *
 * roi_align_forward(table, rois, channels, height, width, pooled_h, pooled_w, spatial_scale,
 *                   sampling_ratio, aligned, out)
 *   table  (N * H * W, C) float32, the map channels last, C-contiguous
 *   rois   (R, 5) float32 [batch_index, x1, y1, x2, y2], batch indices in [0, N)
 *   out    (R, C, pooled_h, pooled_w) float32, C-contiguous, writable
 * roi_align_backward(grad_table, rois, ..., grad_out) takes the same arguments and adds the
 * map's gradient to grad_table (zeros to start with) from the pooled gradient grad_out.
 * A RoI with a non-finite corner (or one the scale takes past float's range) pools zeros and
 * passes no gradient (the PyTorch path cannot index its samples).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

/* A RoI's pooling (its channel loops inlined) also gets an FMA (AVX) build where GCC can make
 * one, picked at load time on CPUs that have it: 8 lanes with fused multiply-adds rather than
 * SSE2's 4 without. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CHANNEL_LOOP __attribute__((target_clones("fma", "default")))
#else
#define CHANNEL_LOOP
#endif

/* The largest adaptive sampling grid along an axis (samples a bin); beyond it, an error. */
#define MAX_GRID 4096

/* One sample coordinate along one axis: its low and high cells and their weights. */
typedef struct {
    Py_ssize_t low, high;
    float w_low, w_high;
    int inside; /* 0: the sample reads zeros (off the map by more than a cell, or NaN) */
} AxisTap;

/* The kernel's bilinear rule along an axis of `limit` cells at coordinate v. */
static AxisTap axis_tap(float v, Py_ssize_t limit) {
    AxisTap tap = {0, 0, 0, 0, v >= -1 && v <= limit};
    if (!tap.inside) return tap;
    v = v <= 0 ? 0 : v; /* at or before the first cell centre: cell 0 */
    tap.low = (Py_ssize_t)v;
    if (tap.low >= limit - 1) { /* at or past the last cell centre: cell limit - 1 */
        tap.low = tap.high = limit - 1;
        v = (float)tap.low;
    } else {
        tap.high = tap.low + 1;
    }
    tap.w_high = v - tap.low;
    tap.w_low = 1 - tap.w_high;
    return tap;
}

/* The taps of an axis' samples: bin k's s-th sample at start + k * bin + (s + 0.5) * bin / grid. */
static void axis_taps(float start, float bin, Py_ssize_t bins, Py_ssize_t grid, Py_ssize_t limit,
                      AxisTap *taps) {
    for (Py_ssize_t k = 0; k < bins; k++)
        for (Py_ssize_t s = 0; s < grid; s++)
            taps[k * grid + s] = axis_tap(start + k * bin + (float)(s + .5f) * bin / (float)grid,
                                          limit);
}

/* acc[c] += the sample's bilinear read of channel c: its row taps times its column taps. */
static inline void add_sample(float *restrict acc, const float *restrict image,
                              Py_ssize_t width, Py_ssize_t channels, AxisTap y, AxisTap x) {
    const float *restrict a = image + (y.low * width + x.low) * channels;
    const float *restrict b = image + (y.low * width + x.high) * channels;
    const float *restrict c = image + (y.high * width + x.low) * channels;
    const float *restrict d = image + (y.high * width + x.high) * channels;
    float wa = y.w_low * x.w_low, wb = y.w_low * x.w_high;
    float wc = y.w_high * x.w_low, wd = y.w_high * x.w_high;
    for (Py_ssize_t k = 0; k < channels; k++)
        acc[k] += wa * a[k] + wb * b[k] + wc * c[k] + wd * d[k];
}

/* The transpose, for the gradient: the sample's four taps each take their weight of grad. */
static inline void spread_sample(const float *restrict grad, float *restrict image,
                                 Py_ssize_t width, Py_ssize_t channels, AxisTap y, AxisTap x) {
    float *a = image + (y.low * width + x.low) * channels;
    float *b = image + (y.low * width + x.high) * channels;
    float *c = image + (y.high * width + x.low) * channels;
    float *d = image + (y.high * width + x.high) * channels;
    float wa = y.w_low * x.w_low, wb = y.w_low * x.w_high;
    float wc = y.w_high * x.w_low, wd = y.w_high * x.w_high;
    /* the four cells may be one (at the map's edge): one after another, not fused */
    for (Py_ssize_t k = 0; k < channels; k++) a[k] += wa * grad[k];
    for (Py_ssize_t k = 0; k < channels; k++) b[k] += wb * grad[k];
    for (Py_ssize_t k = 0; k < channels; k++) c[k] += wc * grad[k];
    for (Py_ssize_t k = 0; k < channels; k++) d[k] += wd * grad[k];
}

typedef struct {
    Py_ssize_t channels, height, width, pooled_h, pooled_w;
    float scale;
    int sampling_ratio, aligned;
} Geometry;

/* The RoI on the map, in torchvision's arithmetic: where it starts and how large it is. */
typedef struct {
    float start_x, start_y, w, h;
} Frame;

static Frame frame_of(const float *roi, const Geometry *g) {
    float offset = g->aligned ? 0.5f : 0.0f;
    Frame f = {roi[1] * g->scale - offset, roi[2] * g->scale - offset, 0, 0};
    f.w = roi[3] * g->scale - offset - f.start_x;
    f.h = roi[4] * g->scale - offset - f.start_y;
    if (!g->aligned) {
        f.w = f.w > 1 ? f.w : 1;
        f.h = f.h > 1 ? f.h : 1;
    }
    return f;
}

/* A frame with a non-finite part (a non-finite corner, or one too large for the scale) has
 * no sample on the map: it pools zeros and passes no gradient. */
static int finite_frame(Frame f) {
    return isfinite(f.start_x) && isfinite(f.start_y) && isfinite(f.w) && isfinite(f.h);
}

/* Samples a bin along an axis of `size` cut into `bins` bins (a float: checked against
 * MAX_GRID before it becomes a count). An inside-out aligned RoI's grid is 0 here where
 * torchvision's is negative; either way it has no samples and pools zeros. */
static float grid_of(float size, Py_ssize_t bins, int sampling_ratio) {
    float grid = sampling_ratio > 0 ? (float)sampling_ratio : ceilf(size / bins);
    return grid > 0 ? grid : 0;
}

/* One RoI's bins. Forward: image -> pooled (C, h, w), each bin the mean of its samples.
 * Backward: grad (C, h, w) -> image, each sample's taps taking its share of its bin's grad.
 * Scratch: acc (C), rows (h * grid_h), cols (w * grid_w). */
CHANNEL_LOOP static void roi_bins(float *image, Frame f, const Geometry *g, float *acc,
                                  AxisTap *rows, AxisTap *cols, float *pooled, int backward) {
    Py_ssize_t bins = g->pooled_h * g->pooled_w;
    Py_ssize_t grid_h = (Py_ssize_t)grid_of(f.h, g->pooled_h, g->sampling_ratio);
    Py_ssize_t grid_w = (Py_ssize_t)grid_of(f.w, g->pooled_w, g->sampling_ratio);
    float count = (float)(grid_h * grid_w > 1 ? grid_h * grid_w : 1);
    axis_taps(f.start_y, f.h / g->pooled_h, g->pooled_h, grid_h, g->height, rows);
    axis_taps(f.start_x, f.w / g->pooled_w, g->pooled_w, grid_w, g->width, cols);
    for (Py_ssize_t i = 0; i < g->pooled_h; i++) {
        for (Py_ssize_t j = 0; j < g->pooled_w; j++) {
            float *bin = pooled + i * g->pooled_w + j; /* channel k at bin[k * bins] */
            for (Py_ssize_t k = 0; k < g->channels; k++) acc[k] = backward ? bin[k * bins] / count : 0;
            for (Py_ssize_t iy = 0; iy < grid_h; iy++) {
                AxisTap y = rows[i * grid_h + iy];
                for (Py_ssize_t ix = 0; y.inside && ix < grid_w; ix++) {
                    AxisTap x = cols[j * grid_w + ix];
                    if (!x.inside) continue;
                    if (backward)
                        spread_sample(acc, image, g->width, g->channels, y, x);
                    else
                        add_sample(acc, image, g->width, g->channels, y, x);
                }
            }
            for (Py_ssize_t k = 0; !backward && k < g->channels; k++) bin[k * bins] = acc[k] / count;
        }
    }
}

/* Check the RoIs while the GIL is held: batch indices in range, adaptive grids not absurd.
 * Returns the largest grid along each axis, or -1 with an exception set. */
static int check_rois(const float *rois, Py_ssize_t count, Py_ssize_t images, const Geometry *g,
                      Py_ssize_t *max_grid_h, Py_ssize_t *max_grid_w) {
    *max_grid_h = *max_grid_w = 1;
    for (Py_ssize_t r = 0; r < count; r++) {
        const float *roi = rois + 5 * r;
        if (!(roi[0] >= 0 && roi[0] < images)) {
            PyErr_SetString(PyExc_ValueError, "roi_align: a batch index off the batch");
            return -1;
        }
        Frame f = frame_of(roi, g);
        if (!finite_frame(f)) continue;
        float grid_h = grid_of(f.h, g->pooled_h, g->sampling_ratio);
        float grid_w = grid_of(f.w, g->pooled_w, g->sampling_ratio);
        if (grid_h > MAX_GRID || grid_w > MAX_GRID) {
            PyErr_SetString(PyExc_ValueError,
                            "roi_align: a RoI too large for an adaptive sampling grid");
            return -1;
        }
        *max_grid_h = grid_h > *max_grid_h ? (Py_ssize_t)grid_h : *max_grid_h;
        *max_grid_w = grid_w > *max_grid_w ? (Py_ssize_t)grid_w : *max_grid_w;
    }
    return 0;
}

/* roi_align_forward and roi_align_backward: the map and the pooled RoIs are buffers of the
 * same shapes either way; `backward` says which one is read and which one written (added to). */
static PyObject *roi_align(PyObject *args, int backward) {
    Py_buffer table, rois, out;
    Geometry g;
    double scale;
    if (!PyArg_ParseTuple(args, "w*y*nnnnndipw*", &table, &rois, &g.channels, &g.height,
                          &g.width, &g.pooled_h, &g.pooled_w, &scale, &g.sampling_ratio,
                          &g.aligned, &out))
        return NULL;
    g.scale = (float)scale;
    PyObject *result = NULL;
    float *acc = NULL;
    AxisTap *rows = NULL, *cols = NULL;
    Py_ssize_t plane = g.channels * g.height * g.width; /* one image's map, in floats */
    Py_ssize_t images = plane > 0 ? table.len / (plane * 4) : 0;
    Py_ssize_t count = rois.len / (5 * 4), bins = g.pooled_h * g.pooled_w;
    Py_ssize_t max_grid_h, max_grid_w;
    if (plane <= 0 || g.pooled_h <= 0 || g.pooled_w <= 0 || table.len != images * plane * 4 ||
        rois.len != count * 5 * 4 || out.len != count * g.channels * bins * 4) {
        PyErr_SetString(PyExc_ValueError, "roi_align: the buffers' sizes disagree");
        goto done;
    }
    if (check_rois(rois.buf, count, images, &g, &max_grid_h, &max_grid_w) < 0) goto done;
    acc = PyMem_Malloc(g.channels * sizeof(float));
    rows = PyMem_Malloc(g.pooled_h * max_grid_h * sizeof(AxisTap));
    cols = PyMem_Malloc(g.pooled_w * max_grid_w * sizeof(AxisTap));
    if (acc == NULL || rows == NULL || cols == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < count; r++) {
        const float *roi = (const float *)rois.buf + 5 * r;
        float *pooled = (float *)out.buf + r * g.channels * bins;
        Frame f = frame_of(roi, &g);
        if (!finite_frame(f)) {
            if (!backward) memset(pooled, 0, g.channels * bins * sizeof(float));
            continue;
        }
        float *image = (float *)table.buf + (Py_ssize_t)roi[0] * plane;
        roi_bins(image, f, &g, acc, rows, cols, pooled, backward);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(acc);
    PyMem_Free(rows);
    PyMem_Free(cols);
    PyBuffer_Release(&table);
    PyBuffer_Release(&rois);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *roi_align_forward(PyObject *self, PyObject *args) { return roi_align(args, 0); }

static PyObject *roi_align_backward(PyObject *self, PyObject *args) { return roi_align(args, 1); }

static PyMethodDef methods[] = {
    {"roi_align_forward", roi_align_forward, METH_VARARGS,
     "roi_align_forward(table, rois, channels, height, width, pooled_h, pooled_w, "
     "spatial_scale, sampling_ratio, aligned, out): RoIAlign of a channels-last float32 map "
     "into out (R, C, h, w)"},
    {"roi_align_backward", roi_align_backward, METH_VARARGS,
     "roi_align_backward(grad_table, rois, ..., grad_out): the same arguments; adds the "
     "gradient of the map, channels last, to grad_table from grad_out (R, C, h, w)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_roi_align", NULL, -1, methods};

PyMODINIT_FUNC PyInit__roi_align(void) { return PyModule_Create(&module); }
