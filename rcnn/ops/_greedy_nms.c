/* Greedy NMS over boxes already in visiting order: the one loop of the lineage that a
 * vectorised PyTorch formulation can only approach (rcnn/ops/nms.py), written as the textbook
 * does it, in C: each kept box drops the later boxes of its group that it overlaps.
 *
 * greedy_nms(boxes, labels, threshold, top_k, keep) -> count
 *   boxes      (n, 4) xyxy, float32 or float64, C-contiguous, in visiting order (best first)
 *   labels     (n,) int64 grouped (equal labels contiguous), or None: boxes of different
 *              labels never suppress each other
 *   threshold  a box is dropped when a kept box overlaps it with IoU > threshold
 *   top_k      stop once this many are kept (< 0: no limit)
 *   keep       (n,) int64, writable: the kept positions, in order, are written to its start
 *
 * Each IoU is the same floating-point number as rcnn.boxes.box_iou computes: the same
 * operations in the same order on the same type (compiled without floating-point
 * contraction); boxes with a NaN corner, whose IoU box_iou reads as 0, are set aside first;
 * the threshold is rounded to the boxes' type, as PyTorch compares a float32 tensor with a
 * Python float. The tests hold the kernel to the PyTorch path, NaN and infinite corners
 * included.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* One kept box against the boxes after it in its group, as a loop without branches that the
 * compiler turns into vector instructions: suppressed[j] |= IoU(kept, j) > threshold. The
 * boxes are columns (x1, y1, x2, y2, area), free of NaN (see NAME below), so that a < b ? a : b
 * is torch.minimum; an IoU of inf - inf (NaN) compares false, as its nan_to_num 0 does for a
 * threshold >= 0, and an infinite one true, as its largest finite value does. */
#define DEFINE_GREEDY(NAME, T)                                                                 \
    static void NAME##_suppress(const T *x1, const T *y1, const T *x2, const T *y2,            \
                                const T *area, Py_ssize_t i, Py_ssize_t from, Py_ssize_t to,   \
                                T threshold, char *suppressed) {                               \
        for (Py_ssize_t j = from; j < to; j++) {                                               \
            T width = (x2[i] < x2[j] ? x2[i] : x2[j]) - (x1[i] > x1[j] ? x1[i] : x1[j]);       \
            T height = (y2[i] < y2[j] ? y2[i] : y2[j]) - (y1[i] > y1[j] ? y1[i] : y1[j]);      \
            width = width < 0 ? (T)0 : width;                                                  \
            height = height < 0 ? (T)0 : height;                                               \
            T inter = width * height;                                                          \
            T iou = inter / (area[i] + area[j] - inter);                                       \
            suppressed[j] |= iou > threshold;                                                  \
        }                                                                                      \
    }                                                                                          \
    /* boxes (n, 4) in visiting order; columns (5 n) scratch -> count kept, positions in keep. \
     * A box with a NaN corner has IoU NaN, read as 0, with every box: for a threshold >= 0 it \
     * suppresses nothing and nothing suppresses it. A threshold < 0 is passed by every IoU,  \
     * 0 included: the first box of each group suppresses the rest. */                        \
    static Py_ssize_t NAME(const T *boxes, const int64_t *labels, Py_ssize_t n, T threshold,   \
                           Py_ssize_t top_k, char *suppressed, T *columns, int64_t *keep) {    \
        T *x1 = columns, *y1 = columns + n, *x2 = columns + 2 * n, *y2 = columns + 3 * n;       \
        T *area = columns + 4 * n;                                                             \
        char *nan = suppressed + n;                                                            \
        for (Py_ssize_t i = 0; i < n; i++) {                                                   \
            const T *box = boxes + 4 * i;                                                      \
            nan[i] = isnan(box[0]) || isnan(box[1]) || isnan(box[2]) || isnan(box[3]);         \
            x1[i] = nan[i] ? 0 : box[0], y1[i] = nan[i] ? 0 : box[1];                          \
            x2[i] = nan[i] ? -1 : box[2], y2[i] = nan[i] ? -1 : box[3];                        \
            T width = box[2] - box[0], height = box[3] - box[1];                               \
            area[i] = (width < 0 ? (T)0 : width) * (height < 0 ? (T)0 : height);               \
        }                                                                                      \
        Py_ssize_t count = 0, end = 0;                                                         \
        for (Py_ssize_t i = 0; i < n && (top_k < 0 || count < top_k); i++) {                  \
            while (end < n && (end <= i || labels == NULL || labels[end] == labels[i])) end++; \
            if (suppressed[i]) continue;                                                       \
            keep[count++] = i;                                                                 \
            if (threshold < 0) { /* even IoU 0 passes it */                                    \
                memset(suppressed + i + 1, 1, end - i - 1);                                    \
                continue;                                                                      \
            }                                                                                  \
            if (nan[i]) continue; /* its corners (0, 0, -1, -1) overlap nothing */            \
            NAME##_suppress(x1, y1, x2, y2, area, i, i + 1, end, threshold, suppressed);       \
        }                                                                                      \
        return count;                                                                          \
    }

DEFINE_GREEDY(greedy_f32, float)
DEFINE_GREEDY(greedy_f64, double)

static int check(int ok, const char *message) {
    if (!ok) PyErr_SetString(PyExc_ValueError, message);
    return ok;
}

static PyObject *greedy_nms(PyObject *self, PyObject *args) {
    Py_buffer boxes, keep, labels = {0};
    PyObject *labels_object;
    double threshold;
    Py_ssize_t top_k;
    if (!PyArg_ParseTuple(args, "y*Odnw*", &boxes, &labels_object, &threshold, &top_k, &keep))
        return NULL;
    PyObject *result = NULL;
    char *suppressed = NULL;
    void *columns = NULL;
    int has_labels = labels_object != Py_None;
    if (has_labels && PyObject_GetBuffer(labels_object, &labels, PyBUF_SIMPLE) < 0) goto done;
    Py_ssize_t n = keep.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t itemsize = n > 0 ? boxes.len / (4 * n) : 4; /* float32 or float64 */
    if (!check(itemsize == 4 || itemsize == 8, "boxes must be (n, 4) float32 or float64") ||
        !check(boxes.len == 4 * n * itemsize, "boxes and keep differ in length") ||
        !check(!has_labels || labels.len == n * (Py_ssize_t)sizeof(int64_t),
               "labels must be (n,) int64"))
        goto done;
    suppressed = PyMem_Calloc(n > 0 ? 2 * n : 1, 1);     /* suppressed, then NaN flags */
    columns = PyMem_Malloc((n > 0 ? 5 * n : 1) * itemsize); /* x1, y1, x2, y2, area */
    if (suppressed == NULL || columns == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *label_data = has_labels ? (const int64_t *)labels.buf : NULL;
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 4)
        count = greedy_f32(boxes.buf, label_data, n, (float)threshold, top_k, suppressed, columns,
                           keep.buf);
    else
        count = greedy_f64(boxes.buf, label_data, n, threshold, top_k, suppressed, columns,
                           keep.buf);
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(count);
done:
    PyMem_Free(suppressed);
    PyMem_Free(columns);
    if (has_labels && labels.obj != NULL) PyBuffer_Release(&labels);
    PyBuffer_Release(&boxes);
    PyBuffer_Release(&keep);
    return result;
}

static PyMethodDef methods[] = {
    {"greedy_nms", greedy_nms, METH_VARARGS,
     "greedy_nms(boxes, labels, threshold, top_k, keep) -> count: greedy NMS over boxes in "
     "visiting order; the kept positions are written to the start of keep"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_greedy_nms", NULL, -1, methods};

PyMODINIT_FUNC PyInit__greedy_nms(void) { return PyModule_Create(&module); }
