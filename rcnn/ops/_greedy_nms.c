/* Greedy NMS over boxes already in visiting order: the one loop of the lineage that a
 * vectorised PyTorch formulation can only approach (rcnn/ops/nms.py), written as the textbook
 * does it, in C.
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
 * contraction), NaN propagating through min and max as in torch.minimum and torch.maximum, and
 * NaN read as 0 and infinities as the type's largest values, as nan_to_num does; the
 * threshold is rounded to the boxes' type, as PyTorch compares a float32 tensor with a
 * Python float. The tests hold the kernel to the PyTorch path bit for bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define DEFINE_GREEDY(NAME, T, T_MAX)                                                         \
    static T NAME##_min(T a, T b) { return (isnan(a) || isnan(b)) ? (T)NAN : (a < b ? a : b); } \
    static T NAME##_max(T a, T b) { return (isnan(a) || isnan(b)) ? (T)NAN : (a > b ? a : b); } \
    static T NAME##_clamp0(T v) { return v < 0 ? (T)0 : v; }                                  \
    static T NAME##_iou(const T *a, const T *b, T area_a, T area_b) {                          \
        T inter = NAME##_clamp0(NAME##_min(a[2], b[2]) - NAME##_max(a[0], b[0]));              \
        T height = NAME##_clamp0(NAME##_min(a[3], b[3]) - NAME##_max(a[1], b[1]));             \
        inter *= height;                                                                       \
        T iou = inter / (area_a + area_b - inter);                                             \
        if (isnan(iou)) return 0;                                                              \
        if (isinf(iou)) return iou > 0 ? T_MAX : -T_MAX;                                       \
        return iou;                                                                            \
    }                                                                                          \
    static Py_ssize_t NAME(const T *boxes, const int64_t *labels, Py_ssize_t n, T threshold,   \
                           Py_ssize_t top_k, char *suppressed, T *areas, int64_t *keep) {      \
        Py_ssize_t count = 0;                                                                  \
        for (Py_ssize_t i = 0; i < n; i++) {                                                   \
            const T *box = boxes + 4 * i;                                                      \
            areas[i] = NAME##_clamp0(box[2] - box[0]) * NAME##_clamp0(box[3] - box[1]);        \
        }                                                                                      \
        for (Py_ssize_t i = 0; i < n && (top_k < 0 || count < top_k); i++) {                  \
            if (suppressed[i]) continue;                                                       \
            keep[count++] = i;                                                                 \
            for (Py_ssize_t j = i + 1; j < n; j++) {                                           \
                if (labels != NULL && labels[j] != labels[i]) break; /* the group ends */      \
                if (!suppressed[j] &&                                                          \
                    NAME##_iou(boxes + 4 * i, boxes + 4 * j, areas[i], areas[j]) > threshold)  \
                    suppressed[j] = 1;                                                         \
            }                                                                                  \
        }                                                                                      \
        return count;                                                                          \
    }

DEFINE_GREEDY(greedy_f32, float, FLT_MAX)
DEFINE_GREEDY(greedy_f64, double, DBL_MAX)

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
    void *areas = NULL;
    int has_labels = labels_object != Py_None;
    if (has_labels && PyObject_GetBuffer(labels_object, &labels, PyBUF_SIMPLE) < 0) goto done;
    Py_ssize_t n = keep.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t itemsize = n > 0 ? boxes.len / (4 * n) : 4; /* float32 or float64 */
    if (!check(itemsize == 4 || itemsize == 8, "boxes must be (n, 4) float32 or float64") ||
        !check(boxes.len == 4 * n * itemsize, "boxes and keep differ in length") ||
        !check(!has_labels || labels.len == n * (Py_ssize_t)sizeof(int64_t),
               "labels must be (n,) int64"))
        goto done;
    suppressed = PyMem_Calloc(n > 0 ? n : 1, 1);
    areas = PyMem_Malloc((n > 0 ? n : 1) * itemsize);
    if (suppressed == NULL || areas == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *label_data = has_labels ? (const int64_t *)labels.buf : NULL;
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 4)
        count = greedy_f32(boxes.buf, label_data, n, (float)threshold, top_k, suppressed, areas,
                           keep.buf);
    else
        count = greedy_f64(boxes.buf, label_data, n, threshold, top_k, suppressed, areas,
                           keep.buf);
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(count);
done:
    PyMem_Free(suppressed);
    PyMem_Free(areas);
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
