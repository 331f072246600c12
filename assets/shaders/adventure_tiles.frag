#version 330
// Top-down tile pass. GL row 0 is the image's top row (frames are read back top-first),
// so world y grows with gl_FragCoord.y and no flip is needed anywhere.
uniform usampler2D tile_map;   // R8UI, one texel per tile: the tile kind
uniform sampler2D tile_atlas;  // RGB, kinds side by side, TILE x TILE texels each
uniform vec2 cam;              // world pixel at the frame's top-left corner
uniform float px;              // world pixels per frame pixel
uniform ivec2 map_tiles;       // map size in tiles
uniform int tile;              // tile size in world pixels
uniform int wall_kind;         // kind drawn outside the map
out vec4 color;
void main() {
    vec2 w = cam + (gl_FragCoord.xy - vec2(0.5)) * px;
    ivec2 t = ivec2(floor(w / float(tile)));
    int kind = wall_kind;
    if (all(greaterThanEqual(t, ivec2(0))) && all(lessThan(t, map_tiles)))
        kind = int(texelFetch(tile_map, t, 0).r);
    ivec2 local = ivec2(floor(w - vec2(t * tile)));
    color = vec4(texelFetch(tile_atlas, ivec2(kind * tile + local.x, local.y), 0).rgb, 1.0);
}
