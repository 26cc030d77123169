/*
 * proxyctl_all.h - the control-plane sources compiled into one unit test
 * translation unit, so tests reach static functions (h2o's t/00unit style).
 */
#include "../../common/util.c"
#include "../../common/str.c"
#include "../../common/ruletable.c"
#include "../../common/rtwrite.c"
#include "../../common/store.c"
#include "../../common/route.c"
#include "../../common/ha.c"
#include "../../proxyctl/diag.c"
#include "../../proxyctl/yaml.c"
#include "../../proxyctl/config.c"
#include "../../proxyctl/check.c"
#include "../../proxyctl/compile.c"
