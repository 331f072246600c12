#version 330
// First-person maze. Without PICKUPS: the raycasting pass, one full-screen triangle; every
// pixel casts a ray from the camera through the map (DDA over map squares) and shows a
// wall, the floor or the ceiling, and writes its linear depth. With PICKUPS (see
// maze.vert): the pickups, camera-facing diamonds depth-tested against that pass.
// A second, integer output names the piece of world each pixel shows (content ids, see
// world/maze3d.py).
//
// Map units: one square per map texel, x to the right (east), y down (south). The eye is
// at height 0.5, walls are 1 high. Frames are read back top row first, so the image row
// grows with gl_FragCoord.y.

const int TEX = 32;           // wall texels per square side (the retro look and the ids)
const int CELL_TEX = 16;      // floor/ceiling id steps per square side
const uint PICKUP_FLAG = 128u;  // map value of an open square under an active pickup

// content id = type << 28 | x << 20 | y << 12 | detail (12 bits)
const int ID_WALL = 1;
const int ID_FLOOR = 2;
const int ID_CEILING = 3;
const int ID_PICKUP = 4;

uniform vec2 pos;             // camera position
uniform vec2 dir;             // unit view direction
uniform vec2 plane;           // camera plane: the right-hand vector * tan(fov / 2)
uniform float far;            // depth that maps to 1.0 in the depth buffer

layout(location = 0) out vec4 color;
layout(location = 1) out int content;

const vec3 PICKUP_COLORS[5] = vec3[5](
    vec3(1.00, 0.82, 0.15), vec3(0.20, 0.90, 1.00), vec3(1.00, 0.32, 0.78),
    vec3(0.35, 1.00, 0.40), vec3(1.00, 0.50, 0.15));
const vec3 PAINT_COLORS[4] = vec3[4](
    vec3(0.85, 0.25, 0.20), vec3(0.25, 0.55, 0.95), vec3(0.30, 0.75, 0.35), vec3(0.80, 0.40, 0.85));
// the average colour of each wall kind (1..5), shown where texels get smaller than pixels
const vec3 KIND_MEAN[6] = vec3[6](
    vec3(0.0), vec3(0.58, 0.32, 0.25), vec3(0.42, 0.43, 0.46), vec3(0.49, 0.32, 0.17),
    vec3(0.23, 0.45, 0.57), vec3(0.50, 0.46, 0.42));
const vec3 FLOOR_A = vec3(0.40, 0.36, 0.31);
const vec3 FLOOR_B = vec3(0.33, 0.30, 0.26);
const vec3 CEILING = vec3(0.17, 0.18, 0.23);
const float SHADOW_R2 = 0.018;     // squared radius of a pickup's shadow on the floor

float hash(ivec3 p) {
    uint h = uint(p.x) * 73856093u ^ uint(p.y) * 19349663u ^ uint(p.z) * 83492791u;
    h = (h ^ (h >> 13u)) * 1274126177u;
    h ^= h >> 16u;
    return float(h & 1023u) / 1023.0;
}

// Light falls off with distance towards black: near walls bright, far corridors dim.
float fog(float z) { return 1.0 / (1.0 + 0.018 * z * z); }

// Wall patterns on a TEX x TEX texel face; t = texel (x right, y down), n = texel noise.
vec3 brick(ivec2 t, ivec2 cell, float n) {
    int row = t.y / 8;                      // 4 courses of bricks 16 texels long
    int x = t.x + (row & 1) * 8;
    if (t.y % 8 == 7 || x % 16 == 15) return vec3(0.58, 0.55, 0.50) * (0.92 + 0.1 * n);
    vec3 c = vec3(0.64, 0.27, 0.19) * (0.8 + 0.3 * hash(ivec3(cell * 8 + ivec2(x / 16, row), 1)));
    if (t.y % 8 == 0) c *= 1.18;            // lit top edge
    return c * (0.93 + 0.14 * n);
}

vec3 stone(ivec2 t, ivec2 cell, float n) {
    int row = t.y / 16;                     // 2 x 2 big blocks, the lower row offset
    int x = t.x + row * 8;
    ivec2 l = ivec2(x % 16, t.y % 16);
    if (l.x == 15 || l.y == 15) return vec3(0.20, 0.21, 0.23);
    vec3 c = vec3(0.50, 0.52, 0.55) * (0.8 + 0.25 * hash(ivec3(cell * 8 + ivec2(x / 16, row), 2)));
    if (l.x == 0 || l.y == 0) c *= 1.2;
    return c * (0.82 + 0.3 * n);
}

vec3 wood(ivec2 t, ivec2 cell, float n) {
    if (t.y < 4) return t.y == 3 ? vec3(0.18, 0.11, 0.05) : vec3(0.32, 0.20, 0.10);  // top beam
    int plank = t.x / 8;                    // 4 vertical planks
    int l = t.x % 8;
    if (l == 0) return vec3(0.22, 0.13, 0.06);                         // seam
    float v = hash(ivec3(cell * 4 + ivec2(plank, 0), 3));
    float grain = hash(ivec3(t.x, t.y / 5 + plank * 7, cell.x + 31 * cell.y)) > 0.78 ? 0.82 : 1.0;
    vec3 c = vec3(0.58, 0.39, 0.20) * (0.82 + 0.28 * v) * grain * (0.96 + 0.08 * n);
    return l == 7 ? c * 0.8 : c;
}

vec3 tiles(ivec2 t, float n) {
    ivec2 l = t % 16;                       // 2 x 2 bevelled panels with a rivet
    vec3 c = vec3(0.22, 0.46, 0.58) * (0.95 + 0.1 * n);
    if (l.x == 0 || l.y == 0) return c * 1.4;
    if (l.x == 15 || l.y == 15) return c * 0.5;
    if ((l.x == 7 || l.x == 8) && (l.y == 7 || l.y == 8)) return c * 0.7;
    return c;
}

vec3 painting(ivec2 t, ivec2 cell, float n) {
    if (t.x < 6 || t.x > 25 || t.y < 6 || t.y > 25) return stone(t, cell, n);
    if (t.x < 8 || t.x > 23 || t.y < 8 || t.y > 23) return vec3(0.82, 0.63, 0.18) * (0.9 + 0.2 * n);
    vec3 c = PAINT_COLORS[int(hash(ivec3(cell, 5)) * 3.99)];           // a sun over hills
    ivec2 d = t - ivec2(16, 13);
    if (d.x * d.x + d.y * d.y <= 12) return vec3(1.0, 0.95, 0.7);
    return t.y > 18 + (abs(t.x - 13) / 3) ? c * 0.55 : c;
}

vec3 wall_color(uint kind, ivec2 t, ivec2 cell) {
    float n = hash(ivec3(t + cell * TEX, 9));
    if (kind == 1u) return brick(t, cell, n);
    if (kind == 2u) return stone(t, cell, n);
    if (kind == 3u) return wood(t, cell, n);
    if (kind == 4u) return tiles(t, n);
    return painting(t, cell, n);
}

int make_id(int type, ivec2 cell, int detail) {
    return (type << 28) | (cell.x << 20) | (cell.y << 12) | detail;
}

#ifndef PICKUPS
uniform usampler2D map_tex;   // R8UI: 0 open, 1..127 wall kind, PICKUP_FLAG open + pickup
uniform int max_ray_steps;    // map width + height: every ray hits the closed border by then
uniform vec2 screen;          // frame size in pixels

void main() {
    float tan_half = length(plane);
    float sx = 2.0 * gl_FragCoord.x / screen.x - 1.0;     // -1 left .. 1 right
    float sy = 1.0 - 2.0 * gl_FragCoord.y / screen.y;     // -1 bottom .. 1 top
    vec2 ray = dir + plane * sx;

    // DDA through the map squares until a wall.
    ivec2 m = ivec2(floor(pos));
    vec2 delta = vec2(ray.x == 0.0 ? 1e30 : abs(1.0 / ray.x), ray.y == 0.0 ? 1e30 : abs(1.0 / ray.y));
    ivec2 stp = ivec2(ray.x < 0.0 ? -1 : 1, ray.y < 0.0 ? -1 : 1);
    vec2 side = vec2(ray.x < 0.0 ? pos.x - float(m.x) : float(m.x) + 1.0 - pos.x,
                     ray.y < 0.0 ? pos.y - float(m.y) : float(m.y) + 1.0 - pos.y) * delta;
    int axis = 0;
    uint kind = 0u;
    for (int i = 0; i < max_ray_steps; i++) {
        if (side.x < side.y) { side.x += delta.x; m.x += stp.x; axis = 0; }
        else                 { side.y += delta.y; m.y += stp.y; axis = 1; }
        kind = texelFetch(map_tex, m, 0).r;
        if (kind != 0u && kind < PICKUP_FLAG) break;
    }
    float z = axis == 0 ? side.x - delta.x : side.y - delta.y;  // perpendicular distance

    float height = 0.5 + sy * z * tan_half;   // height on the wall this pixel looks at
    vec3 c;
    float depth;
    if (height >= 0.0 && height < 1.0) {
        vec2 hit = pos + ray * z;
        // u grows to the viewer's right on every face; face: 0 W, 1 E, 2 N, 3 S side of the square
        float u = axis == 0 ? fract(hit.y) : fract(hit.x);
        if ((axis == 0 && stp.x < 0) || (axis == 1 && stp.y > 0)) u = 1.0 - u;
        int face = axis * 2 + ((axis == 0 ? stp.x : stp.y) < 0 ? 1 : 0);
        ivec2 t = min(ivec2(vec2(u, 1.0 - height) * float(TEX)), ivec2(TEX - 1));
        // where a texel gets smaller than a pixel, fade the pattern to its mean (no shimmer)
        float px_per_texel = screen.y / (2.0 * z * tan_half * float(TEX));
        c = mix(KIND_MEAN[min(kind, 5u)], wall_color(kind, t, m), clamp(px_per_texel - 0.5, 0.0, 1.0));
        c *= (axis == 1 ? 0.78 : 1.0) * fog(z);
        content = make_id(ID_WALL, m, (face << 10) | (t.x << 5) | t.y);
        depth = z;
    } else {
        // floor or ceiling: the square under/over this pixel, at perpendicular distance zf
        bool is_floor = height < 0.0;
        float zf = 0.5 / (abs(sy) * tan_half);
        vec2 p = pos + ray * zf;
        ivec2 cell = ivec2(floor(p));
        vec2 f = fract(p);
        ivec2 q = min(ivec2(f * float(CELL_TEX)), ivec2(CELL_TEX - 1));
        if (is_floor) {
            c = ((cell.x + cell.y) & 1) == 0 ? FLOOR_A : FLOOR_B;
            vec2 d = f - 0.5;
            if (texelFetch(map_tex, cell, 0).r == PICKUP_FLAG && dot(d, d) < SHADOW_R2) c *= 0.55;
        } else {
            c = CEILING;
        }
        c *= fog(zf);
        content = make_id(is_floor ? ID_FLOOR : ID_CEILING, cell, (q.x << 4) | q.y);
        depth = zf;
    }
    color = vec4(c, 1.0);
    gl_FragDepth = min(depth / far, 1.0);
}

#else
in vec2 v_uv;                 // -1..1 across the quad, v up
flat in vec4 v_pickup;        // x, y, palette index, pickup id
flat in float v_depth;

void main() {
    float r = abs(v_uv.x) + abs(v_uv.y);
    if (r >= 1.0) discard;
    vec3 base = PICKUP_COLORS[int(v_pickup.z)];
    // four facets lit from the upper left, a dark rim and a highlight
    float facet = v_uv.x < 0.0 ? (v_uv.y > 0.0 ? 1.15 : 0.8) : (v_uv.y > 0.0 ? 0.95 : 0.6);
    vec3 c = r > 0.8 ? base * 0.4 : min(base * facet, vec3(1.0));
    if (abs(v_uv.x + 0.35) + abs(v_uv.y - 0.3) < 0.18) c = vec3(1.0);
    color = vec4(c * sqrt(fog(v_depth)), 1.0);
    ivec2 q = min(ivec2((v_uv * 0.5 + 0.5) * 16.0), ivec2(15));
    content = (ID_PICKUP << 28) | (int(v_pickup.w) << 8) | (q.x << 4) | q.y;
}
#endif
